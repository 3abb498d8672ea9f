"""The service's contract (chapter 18): what its OpenAPI document promises is what it does, on any input.

- Property tests (hypothesis) of ``parse_request``: on arbitrary bytes it returns a request or refuses with a 4xx
  and a message, never anything else; on arbitrary JSON it accepts exactly what the documented schema accepts.
- An external fuzzer (schemathesis, reading ``/openapi.json``) against the real server on loopback, bounded in
  examples and time: every response conforms to the schema, schema-valid bodies are accepted, schema-invalid ones
  refused with a 4xx, a 405 names the allowed methods, and no response is a 5xx.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from behind_pipeline.service.app import RequestRefused, parse_request
from behind_pipeline.service.schemas import request_model
from behind_pipeline.service.settings import ServiceSettings

LIMITS = ServiceSettings(max_chars=20, max_texts=3)
NUM_LABELS = 2
DOCUMENTED = request_model(LIMITS.max_chars, LIMITS.max_texts, NUM_LABELS)
PROPERTY_SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow])


def outcome(body: bytes, content_type: str = "application/json"):
    """("accepted", request) or ("refused", status); any other exception fails the test that calls it."""
    try:
        return "accepted", parse_request(body, content_type, LIMITS, NUM_LABELS)
    except RequestRefused as refused:
        assert 400 <= refused.status < 500 and refused.error and refused.detail.strip()
        return "refused", refused.status


def documented_accepts(body: bytes) -> bool:
    try:
        DOCUMENTED.model_validate_json(body)
    except ValueError:  # pydantic's ValidationError
        return False
    return True


@PROPERTY_SETTINGS
@given(st.binary(max_size=300), st.sampled_from(["application/json", "application/json; charset=utf-8",
                                                 "text/plain", ""]))
def test_parse_request_answers_any_bytes_with_a_request_or_a_4xx(body, content_type):
    outcome(body, content_type)


# JSON values of any shape, and texts that are near the limits, blank, or odd (controls, surrogates allowed).
odd_text = st.one_of(st.text(max_size=25), st.text(alphabet=" \t\n\u3000\u2003\x1c\ufeffa", max_size=22),
                     st.text(alphabet=st.characters(codec=None, categories=None), max_size=4))
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text,
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=3),
                          max_leaves=12)
texts_field = st.one_of(odd_text, st.lists(odd_text, max_size=5), json_value)
top_k_field = st.one_of(st.integers(-3, 4), st.integers(), st.none(), json_value)


@st.composite
def request_bodies(draw) -> bytes:
    body = {}
    if draw(st.integers(0, 9)):  # now and then no texts at all
        body["texts"] = draw(texts_field)
    if draw(st.booleans()):
        body["top_k"] = draw(top_k_field)
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.sampled_from(["topk", "text", "extra"]))] = draw(json_value)
    return json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@PROPERTY_SETTINGS
@given(request_bodies())
def test_parse_request_accepts_exactly_what_the_documented_schema_accepts(body):
    verdict, value = outcome(body)
    assert (verdict == "accepted") == documented_accepts(body), (verdict, value)
    if verdict == "accepted":  # and the texts are those sent, untouched
        sent = json.loads(body)["texts"]
        assert value.texts == sent


def test_the_schema_declares_every_limit():
    schema = json.dumps(DOCUMENTED.model_json_schema())
    for declared in ('"maxLength": 20', '"minLength": 1', '"maxItems": 3', '"minItems": 1', '"maximum": 2',
                     '"minimum": 1', '"additionalProperties": false', '"pattern"'):
        assert declared in schema, declared


SCHEMATHESIS_EXAMPLES = 60  # per operation and phase
# The bound that binds: in 90 s schemathesis 4.32 sent about 3,150 requests (35 a second on 2 cores); 30 s send about
# 1,000, over the 4 operations, and the property tests above cover the parser on 400 bodies each.
SCHEMATHESIS_SECONDS = 30


def test_schemathesis_finds_no_server_error_and_no_broken_promise(tmp_path):
    from behind_pipeline.service.local import start_server

    report = tmp_path / "report.ndjson"
    checks = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
              "response_schema_conformance,negative_data_rejection,positive_data_acceptance,unsupported_method,"
              "allow_header_conformance")
    limits = {"BTP_SERVICE_MAX_CHARS": "200", "BTP_SERVICE_MAX_TEXTS": "8"}
    # A body over a limit the schema declares (too many texts, a text too long) is a 413 Content Too Large, as
    # the chapter teaches; schemathesis counts only 400, 415, 422, ... as a refusal unless told.
    config = tmp_path / "schemathesis.toml"
    config.write_text("[checks.negative_data_rejection]\nexpected-statuses = [400, 405, 413, 415, 422]\n")
    with start_server(limits) as running:
        assert running.url.startswith("http://127.0.0.1:")
        ready_at = len(running.log_text())  # the readiness polls before (503 loading) are not the fuzzer's
        run = subprocess.run(
            [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run",
             f"{running.url}/openapi.json",
             "--checks", checks, "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--seed", "18",
             "--max-time", str(SCHEMATHESIS_SECONDS), "--workers", "1", "--request-timeout", "30",
             "--generation-database", "none", "--no-color", "--report", "ndjson", "--report-ndjson-path",
             str(report)],
            capture_output=True, text=True, timeout=SCHEMATHESIS_SECONDS + 120, cwd=tmp_path)
        log = running.log_text()[ready_at:]
    statuses = [json.loads(line)["status"] for line in log.splitlines() if line.startswith('{"request_id"')]
    print(run.stdout[-3000:])
    print(f"schemathesis sent {len(statuses)} requests; 5xx answers: {sum(s >= 500 for s in statuses)}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert len(statuses) >= 50 and not [status for status in statuses if status >= 500]


@pytest.mark.parametrize("body", [b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                                  b'{"texts": "ok", "top_k": ' + b"9" * 10_000 + b"}",
                                  b'{"texts": ["\\ud800"]}', b'{"texts": "\\udfff and more"}'])
def test_the_three_bodies_that_gave_a_500_are_refused_with_a_400(body):
    assert outcome(body) == ("refused", 400)
