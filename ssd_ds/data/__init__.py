"""Data layer: COCO 2017 on disk (real or synthetic), annotation conversion, datasets, transforms and loaders."""
