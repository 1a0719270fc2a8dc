"""The worker lane's seek after a resume tolerates a rebalance that moved the partition on."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from node_workers.runtime import seek_unless_rebalanced


def test_a_seek_on_a_partition_the_consumer_no_longer_fetches_is_skipped_not_raised() -> None:
    # A real librdkafka consumer (no broker needed): seeking a partition it is not assigned is
    # what a seek racing a revoke looks like; it raised and killed the lane before.
    consumer = Consumer(
        {"bootstrap.servers": "127.0.0.1:9", "group.id": "seek-test", "log_level": 0}
    )
    try:
        assert seek_unless_rebalanced(consumer, TopicPartition("invoke", 0, 8)) is False
    finally:
        consumer.close()
