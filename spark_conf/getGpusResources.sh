#!/usr/bin/env bash
# Spark GPU discovery script: prints the GPU addresses nvidia-smi sees, as Spark's
# resource JSON, e.g. {"name": "gpu", "addresses":["0","1"]}.
ADDRS=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | sed -e ':a' -e 'N' -e '$!ba' -e 's/\n/","/g')
echo "{\"name\": \"gpu\", \"addresses\":[\"${ADDRS}\"]}"
