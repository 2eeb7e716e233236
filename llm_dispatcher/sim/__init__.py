"""A vLLM 0.32-compatible simulator: OpenAI API, /metrics, continuous batching, fault injection.

from llm_dispatcher.sim import SimConfig, create_app, serve_in_thread
"""

from llm_dispatcher.sim.app import SimApp, create_app
from llm_dispatcher.sim.config import SimConfig
from llm_dispatcher.sim.server import SimServer, serve_in_thread

__all__ = ["SimApp", "SimConfig", "SimServer", "create_app", "serve_in_thread"]
