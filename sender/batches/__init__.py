"""The OpenAI Files and Batch APIs, run through the same queues as interactive requests.

    api.py       /v1/files and /v1/batches (OpenAI's shapes), owned by the token that made them
    input.py     checking a batch input file, line by line (pure)
    objects.py   the OpenAI objects and output lines (pure)
    runner.py    claiming lines in the database and running each through admit → dispatch → relay → record

The database is the source of truth (llm_dispatcher/db/batches.py); the broker only carries tickets.
"""
