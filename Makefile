.PHONY: start test gpu-test
start:      ## set up and start the main job
	bash scripts/start.sh
test:       ## set up and run every test (CPU)
	bash scripts/test.sh
gpu-test:   ## on a CUDA machine: GPU tests and benchmarks (see scripts/gpu_run.sh)
	bash scripts/gpu_run.sh
