# Convenience wrappers; the scripts work without make.
.PHONY: setup run test proto experiment
setup:
	bash scripts/setup.sh
run:
	bash scripts/run.sh
test:
	bash scripts/test.sh
proto:  # regenerate schemas/sample_pb2.py after editing schemas/sample.proto
	cd schemas && ../.venv/bin/python -m grpc_tools.protoc -I. --python_out=. sample.proto
experiment:  # the default study (experiments/formats.toml); PRESET=compression etc. for another
	.venv/bin/python -m ddp_kbit.main --mode experiment --preset $(or $(PRESET),formats)
