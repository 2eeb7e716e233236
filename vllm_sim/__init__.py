"""A vLLM 0.32-compatible simulator: OpenAI API, /metrics, continuous batching, fault injection.

    from vllm_sim import SimConfig, create_app

Development and test tooling, outside the product (install with the ``sim`` extra). Run it with
``llm-dispatcher sim``; in a test or a benchmark, ``devstack.inprocess.SimServer`` serves one in a
thread and ``devstack.processes.SimProcess`` in a child process.
"""

from vllm_sim.app import SimApp, create_app
from vllm_sim.config import SimConfig

__all__ = ["SimApp", "SimConfig", "create_app"]
