# Training image: CUDA base, the runtime requirements (requirements.txt; not the optional export and test groups) at
# the versions of constraints.txt (torch 2.14.1 brings its own CUDA 13 libraries), the repo installed.
#   docker build -t ssd_ds .
#   source scripts/launch/config_DGXA100.sh
#   CONT=ssd_ds DATADIR=/data/coco LOGDIR=/results scripts/launch/run_with_docker.sh
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git curl unzip ca-certificates openssh-client pdsh \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /workspace/ssd_ds
COPY requirements.txt constraints.txt ./
RUN pip install -r requirements.txt -c constraints.txt
COPY . .
RUN pip install --no-deps --no-build-isolation -e .
ENV DATADIR=/data LOGDIR=/results
CMD ["scripts/launch/run_and_time.sh"]
