"""Real-vLLM tier: the dispatcher end to end in front of a real vLLM on CPU (SmolLM2-135M served as
`smollm2`), and the upstream contract checked against it. The `real_vllm` fixture installs vLLM and the
model once per machine (minutes; `scripts/real-vllm.sh`) or uses `LLMD_REAL_VLLM_URL`. Every test that
needs the real engine is marked `real_vllm` (`make test-real-vllm`; `make test-fast` leaves them out);
the contract suite's simulator half needs no vLLM, is marked `sim`, and runs in `make test-fast`."""
