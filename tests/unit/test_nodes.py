"""Several broker nodes: how LLMD_AMQP_URL lists them, and each node's model queue name."""

from __future__ import annotations

import pytest

from llm_dispatcher.nodes import broker_urls
from llm_dispatcher.protocol import model_queue


def test_one_url_is_a_cluster_of_one_and_a_comma_separates_the_nodes_in_order():
    assert broker_urls("amqp://u:p@mq:5672/") == ["amqp://u:p@mq:5672/"]
    assert broker_urls(" amqp://a:5672/ , amqp://b:5672/,amqp://c:5672/,") == [
        "amqp://a:5672/",
        "amqp://b:5672/",
        "amqp://c:5672/",
    ]
    with pytest.raises(ValueError, match="no broker URL"):
        broker_urls(" , ")


def test_node_0_keeps_the_single_node_queue_name_and_no_node_queue_can_be_another_models():
    assert model_queue("llmd", "m") == model_queue("llmd", "m", 0) == "llmd.model.m"
    names = {model_queue("llmd", model, node) for model in ("a", "a.n1", "node1.model.a", "b") for node in range(3)}
    assert len(names) == 12  # a model named like another's node queue still gets queues of its own
