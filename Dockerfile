# Training image: CUDA PyTorch base, pinned requirements, the repo installed.
FROM nvcr.io/nvidia/pytorch:25.10-py3
WORKDIR /workspace/ssd_ds
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN pip install --no-cache-dir --no-deps -e .
