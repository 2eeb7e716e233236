"""llm-dispatcher: priority dispatch, load shedding and usage accounting in front of vLLM."""

__version__ = "0.1.0"
