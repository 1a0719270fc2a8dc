"""A repeated query parameter is refused, naming it (api/query_params.py)."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from api.query_params import single_valued_query


def _app() -> FastAPI:
    app = FastAPI(dependencies=[Depends(single_valued_query)])

    @app.get("/things")
    def things(category: str | None = None) -> dict[str, str | None]:
        return {"category": category}

    return app


def test_one_value_per_parameter_is_answered() -> None:
    with TestClient(_app()) as client:
        response = client.get("/things", params={"category": "http"})
    assert response.status_code == 200 and response.json() == {"category": "http"}


def test_a_repeated_parameter_is_a_422_naming_it() -> None:
    with TestClient(_app()) as client:
        response = client.get("/things?category=a&category=b&x=1")
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "category"]
    assert error["type"] == "repeated_query_parameter"
    assert "got 2" in error["msg"] and error["input"] == ["a", "b"]
