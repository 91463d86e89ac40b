"""Generated requests against ``digitnet serve``: schemathesis from /openapi.json over real
HTTP, and hypothesis over the :predict request parser. Nothing may answer 5xx.

Bounded for CI: a fixed number of examples, derandomised (the same requests on every run).
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from digitnet.serving.protocol import InstanceShapes, Predictor, RequestError
from test_server import RunningServer, random_seed_model

#: requests schemathesis sends; at least MIN_REQUESTS must have gone out
EXAMPLES = 1200
MIN_REQUESTS = 1000


@pytest.fixture(scope="module")
def model():
    return random_seed_model()


@pytest.fixture(scope="module")
def server(model):
    with RunningServer(model) as running:
        yield running


def test_schemathesis_finds_no_server_error(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    strategy = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    sent: list[tuple[str, int]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        case = data.draw(strategy)
        response = case.call(base_url=server.url)
        sent.append((case.operation.label, response.status_code))
        case.validate_response(
            response,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )

    run()
    by_status = sorted({status for _, status in sent})
    print(f"schemathesis: {len(sent)} requests over {len({op for op, _ in sent})} operations")
    print(f"statuses seen: {by_status}")
    assert len(sent) >= MIN_REQUESTS
    assert all(status < 500 for _, status in sent)


# ---------------------------------------------------------------------------------------------
# The request parser, in-process: any JSON either predicts or raises RequestError


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=40,
)
near_instances = st.fixed_dictionaries(
    {},
    optional={
        "instances": st.lists(
            st.lists(st.floats(0, 1), min_size=784, max_size=784)
            | st.lists(
                st.lists(st.floats(0, 1), min_size=28, max_size=28), min_size=28, max_size=28
            )
            | json_values,
            max_size=3,
        ),
        "inputs": json_values,
        "signature_name": st.sampled_from(["serving_default", "other"]) | json_values,
    },
)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(payload=near_instances | json_values, junk=st.binary(max_size=64))
def test_predict_parser_answers_or_raises_request_error(payload, junk):
    predictor = Predictor(random_seed_model())
    for body in (json.dumps(payload).encode(), junk, json.dumps(payload).encode()[:-1]):
        try:
            answer = json.loads(predictor.predict(predictor.parse(body)))
        except RequestError as error:
            assert 400 <= error.status < 500 and str(error)
            continue
        rows = answer.get("predictions", answer.get("outputs"))
        assert rows is not None


def test_instance_shapes_bound_nesting():
    assert InstanceShapes(random_seed_model()).max_depth == 3
