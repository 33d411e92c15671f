"""A small REST client for the `lepton` CLI: one place that turns HTTP failures into one line."""

from __future__ import annotations

import argparse
import os
from typing import Any

import httpx

from lepton_edge.shared.errors import UserError

DEFAULT_URL = "http://127.0.0.1:8080"


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help=f"controller URL (env LEPTON_URL, default {DEFAULT_URL})"
    )
    parser.add_argument("--token", default=None, help="API token (env LEPTON_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print raw JSON")


class Client:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30
    ) -> None:
        self.url = (url or os.environ.get("LEPTON_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("LEPTON_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Client:
        return cls(args.url, args.token)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise UserError(
                f"cannot reach the controller at {self.url} ({type(exc).__name__}); "
                "is it running? set --url or LEPTON_URL"
            ) from None
        if response.status_code == 401:
            raise UserError(
                f"the controller refused the token ({_detail(response)}); "
                "pass --token or set LEPTON_TOKEN (lepton-controller token create)"
            )
        if response.status_code == 403:
            raise UserError(f"not allowed: {_detail(response)}; use an admin token")
        if response.status_code >= 400:
            raise UserError(f"{method} {path} failed ({response.status_code}): {_detail(response)}")
        if not response.content:
            return None
        return response.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self.http.close()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        if "message" in body:
            return str(body["message"])
        detail = body.get("detail")
        if isinstance(detail, dict):
            return str(detail.get("message", detail))
        return str(detail)
    return str(body)[:200]
