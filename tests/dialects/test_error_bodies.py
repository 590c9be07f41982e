"""error_body of each dialect makes the official SDK raise the matching exception with our message."""

from __future__ import annotations

import json

import anthropic
import httpx2
import openai
import pytest
from google.genai import errors as genai_errors

from odock.dialects import anthropic as ad
from odock.dialects import gemini as gd
from odock.dialects import openai_responses as rd
from odock.errors import GatewayError

STATUSES = [400, 401, 403, 404, 429, 500, 502, 503]
ANTHROPIC = {
    400: anthropic.BadRequestError,
    401: anthropic.AuthenticationError,
    403: anthropic.PermissionDeniedError,
    404: anthropic.NotFoundError,
    429: anthropic.RateLimitError,
    500: anthropic.InternalServerError,
    502: anthropic.InternalServerError,
    503: anthropic.InternalServerError,
}
OPENAI = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    429: openai.RateLimitError,
    500: openai.InternalServerError,
    502: openai.InternalServerError,
    503: openai.InternalServerError,
}


def _response(status: int, body: bytes) -> httpx2.Response:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/x")
    return httpx2.Response(
        status, content=body, headers={"content-type": "application/json"}, request=request
    )


@pytest.mark.parametrize("status", STATUSES)
def test_anthropic_sdk_exception(status: int) -> None:
    """The Anthropic SDK raises its class for the status and exposes our message and code."""
    err = GatewayError("nope here", "some_code", status=status)
    client = anthropic.Anthropic(api_key="test", base_url="http://127.0.0.1:1")
    exc = client._make_status_error_from_response(_response(status, ad.error_body(err)))
    assert isinstance(exc, ANTHROPIC[status])
    assert exc.api_message == "nope here"
    assert json.loads(ad.error_body(err))["error"]["code"] == "some_code"


@pytest.mark.parametrize("status", STATUSES)
def test_openai_sdk_exception(status: int) -> None:
    """The OpenAI SDK raises its class for the status with our message and code."""
    err = GatewayError("nope here", "some_code", status=status, extra={"param": "model"})
    client = openai.OpenAI(api_key="test", base_url="http://127.0.0.1:1/v1")
    exc = client._make_status_error_from_response(_response(status, rd.error_body(err)))
    assert isinstance(exc, OPENAI[status])
    assert exc.code == "some_code" and exc.param == "model" and "nope here" in str(exc)


@pytest.mark.parametrize("status", STATUSES)
def test_genai_sdk_exception(status: int) -> None:
    """google-genai raises ClientError for 4xx and ServerError for 5xx with our message and status name."""
    err = GatewayError("nope here", "some_code", status=status)
    with pytest.raises(genai_errors.APIError) as info:
        genai_errors.APIError.raise_error(status, json.loads(gd.error_body(err)), None)
    expected = genai_errors.ClientError if status < 500 else genai_errors.ServerError
    assert type(info.value) is expected
    assert info.value.code == status and info.value.message == "nope here" and info.value.status
