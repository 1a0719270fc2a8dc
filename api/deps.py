"""Dependency aliases (``Annotated[..., Depends(...)]``) for the routers.

Everything comes from ``app.state``, set up once by the lifespan in :mod:`api.app`, so a test
builds an app with its own settings and gets its own pool, producer and metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from api.config import ApiSettings
from api.prometheus import ApiMetrics
from api.publisher import Publisher
from api.readmodel import ReadModel
from api.reflection import ClickHouseAccess
from api.store import ApiStore
from foundation.settings import Settings
from processors.alerts.view import AlertsView
from projections.clickhouse import ClickHouse
from streams.producer import Producer
from streams.topics import TopicCatalog

__all__ = [
    "AlertsViewDep",
    "ApiSettingsDep",
    "ClickHouseDep",
    "ConnDep",
    "PoolDep",
    "ProducerDep",
    "PrometheusDep",
    "PublisherDep",
    "ReadModelDep",
    "SettingsDep",
    "StoreDep",
    "TopicsDep",
]


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_api_settings(request: Request) -> ApiSettings:
    api: ApiSettings = request.app.state.api_settings
    return api


def get_pool(request: Request) -> ConnectionPool[Any]:
    pool: ConnectionPool[Any] = request.app.state.pool
    return pool


def get_conn(request: Request) -> Iterator[psycopg.Connection[Any]]:
    """A pooled autocommit connection for the request; a PoolTimeout becomes 503."""
    pool = get_pool(request)
    with pool.connection(timeout=get_api_settings(request).pool_timeout_s) as conn:
        yield conn


def get_producer(request: Request) -> Producer:
    producer: Producer = request.app.state.publisher.producer
    return producer


def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


def get_topics(request: Request) -> TopicCatalog:
    topics: TopicCatalog = request.app.state.topics
    return topics


def get_prometheus(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


def get_clickhouse(request: Request) -> ClickHouse:
    """The traces store; 503 naming the reason when this API has none (disabled, not
    reachable, or owned by another process)."""
    access: ClickHouseAccess = request.app.state.clickhouse
    return access.require()


def get_alerts_view(request: Request) -> AlertsView:
    """The alerts view, created on first use; 503 when the alerts topic cannot be read."""
    view: AlertsView = request.app.state.alerts_view.get()
    return view


def get_read_model(request: Request) -> ReadModel:
    read_model: ReadModel = request.app.state.read_model
    return read_model


def get_store(request: Request) -> ApiStore:
    store: ApiStore = request.app.state.store
    return store


SettingsDep = Annotated[Settings, Depends(get_settings)]
ApiSettingsDep = Annotated[ApiSettings, Depends(get_api_settings)]
PoolDep = Annotated[ConnectionPool[Any], Depends(get_pool)]
ConnDep = Annotated[psycopg.Connection[Any], Depends(get_conn)]
ProducerDep = Annotated[Producer, Depends(get_producer)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
TopicsDep = Annotated[TopicCatalog, Depends(get_topics)]
PrometheusDep = Annotated[ApiMetrics, Depends(get_prometheus)]
ReadModelDep = Annotated[ReadModel, Depends(get_read_model)]
StoreDep = Annotated[ApiStore, Depends(get_store)]
ClickHouseDep = Annotated[ClickHouse, Depends(get_clickhouse)]
AlertsViewDep = Annotated[AlertsView, Depends(get_alerts_view)]
