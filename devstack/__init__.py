"""Development tooling: local stacks and the ways of starting a simulator, shared by the tests, the
benchmarks (``bench/``) and ``llm-dispatcher dev``. Not part of the product; ships with the ``sim`` extra.

- ``devstack.net``: ``free_port()``, ``wait_http()``.
- ``devstack.inprocess``: servers inside this process, on real loopback sockets: ``AsgiServer`` (any
  ASGI app), ``SimServer`` (a vLLM simulator), each in its own thread or on a shared ``BackgroundLoop``.
- ``devstack.processes``: child processes, as in production: ``SimProcess`` (``llm-dispatcher sim``)
  and ``ProcessStack`` (simulators, one consumer each, a sender).
- ``devstack.dev``: the ``llm-dispatcher dev`` subcommand (what ``make run`` starts).
"""
