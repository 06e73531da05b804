# Convenience wrappers; the scripts work without make.
.PHONY: setup run test proto bench-publish
setup:
	bash scripts/setup.sh
run:
	bash scripts/run.sh
test:
	bash scripts/test.sh
proto:  # regenerate schemas/sample_pb2.py after editing schemas/sample.proto
	cd schemas && ../.venv/bin/python -m grpc_tools.protoc -I. --python_out=. sample.proto
bench-publish:
	.venv/bin/python bench/publish.py
