"""A minimal faust-streaming app used to prove faust works against the local broker.

Run as ``python -m tests.integration.faust_probe worker`` with PROBE_* variables; it doubles
each number from PROBE_IN into PROBE_OUT and counts them in a changelog-backed table.
"""

from __future__ import annotations

import os

import faust

from foundation.settings import Settings
from streams.security import faust_credentials

BROKER = os.environ.get("PROBE_BROKER", "kafka://127.0.0.1:19092")
IN_TOPIC = os.environ["PROBE_IN"]
OUT_TOPIC = os.environ["PROBE_OUT"]
GUARANTEE = os.environ.get("PROBE_GUARANTEE", "at_least_once")

app = faust.App(
    os.environ["PROBE_APP"],
    broker=BROKER,
    # REFLUX_KAFKA_* of the environment, as the project's own faust apps take them.
    broker_credentials=faust_credentials(Settings()),
    store="memory://",
    processing_guarantee=GUARANTEE,
    topic_partitions=2,
    web_enabled=False,
    topic_allow_declare=True,
    # faust's default data folder is "<app id>-data" in the working directory (the checkout).
    datadir=os.environ["PROBE_DATADIR"],
)
source = app.topic(IN_TOPIC, key_type=bytes, value_type=bytes, value_serializer="raw")
sink = app.topic(OUT_TOPIC, key_type=bytes, value_type=bytes, value_serializer="raw")
counts = app.Table("counts", default=int, partitions=2)


@app.agent(source)
async def double(stream: faust.StreamT[bytes]) -> None:
    async for key, value in stream.items():
        counts["seen"] += 1
        await sink.send(key=key, value=str(int(value) * 2).encode())


if __name__ == "__main__":
    app.main()
