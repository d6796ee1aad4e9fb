"""`linkedout serve` over real HTTP: rankings equal `linkedout recommend`'s, bad input is one
4xx sentence, the token and the load shedding hold, and it stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from linkedout.recommend.config import ModelConfig
from linkedout.service.config import MAX_HISTORY, MAX_K
from tests.cli_harness import assert_one_line_error, run_linkedout


def _recommend_cli(run, *args) -> dict:
    proc = run_linkedout(["recommend", run, *args, "--json"])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_rankings_over_http_equal_linkedout_recommend(trained_run, server):
    with server.client() as http:
        for user in ("u3", "u10"):
            cli = _recommend_cli(trained_run, "--user", user, "--k", "7", "--explain")
            got = http.post("/recommend", json={"user": user, "k": 7, "explain": True})
            assert got.status_code == 200, got.text
            assert got.headers["server-timing"].startswith("app;dur=")
            body = got.json()
            assert body["items"] == cli["items"]  # ids, scores, depths: exactly
            for item in body["items"]:  # the 0.1 names, kept until 0.3
                assert item["top_expert"] in (2, 4, 6, 8) and len(item["expert_scores"]) == 4
                assert item["top_layer"] == item["top_expert"]
                assert item["layer_scores"] == item["expert_scores"]
            assert body["gate"] == {str(k): v for k, v in cli["gate"].items()}
            assert body["catalog_version"] == 1
        history = ["v0001", "v0017", "not-an-item", "v0033"]
        cli = _recommend_cli(trained_run, "--history", ",".join(history), "--k", "5")
        single = http.post("/recommend", json={"history": history, "k": 5}).json()
        assert single["items"] == cli["items"] and single["unknown"] == ["not-an-item"]
        # The batch ranks everyone in one product: the same answers as one by one (up to
        # float rounding: shorter histories are padded to the longest in the batch).
        batch = http.post(
            "/recommend/batch",
            json={"requests": [{"history": history, "k": 5}, {"user": "u3", "k": 7}]},
        )
        assert batch.status_code == 200, batch.text
        for got, alone in zip(
            batch.json()["results"],
            [single, _recommend_cli(trained_run, "--user", "u3", "--k", "7")],
            strict=True,
        ):
            assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in alone["items"]]
            for a, b in zip(got["items"], alone["items"], strict=True):
                assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        excluded = http.post(
            "/recommend", json={"history": history, "k": 5, "exclude": [cli["items"][0]["item_id"]]}
        ).json()
        assert excluded["items"][0] == cli["items"][1]  # the excluded best is skipped
        assert http.get("/healthz").json() == {"status": "alive"}
        meta = http.get("/metadata").json()
        assert meta["catalog"] == {"version": 1, "size": 240, "added": 0}
        # --index auto on 240 items: the exact scan, and no graph is built for it
        assert meta["index"]["mode"] == "auto" and meta["index"]["in_use"] == "exact"
        assert meta["index"]["building"] is False
        assert meta["experts"] == meta["layers"] == [2, 4, 6, 8] and meta["fusion"] == "moe"
        assert (
            meta["new_item_lift"] == ModelConfig().new_item_lift
        )  # the run's default: `serve` was given none
        assert http.get("/items/v0001").json()["trained"] is True
        assert "/recommend" in http.get("/openapi.json").json()["paths"]


JSON = {"content-type": "application/json"}
BAD_REQUESTS = [
    # (what the client sent, status, a fragment of the one-sentence answer)
    ({"content": b'{"history": [', "headers": JSON}, 400, "not valid JSON"),
    (
        {"content": b'{"user": "u1"}', "headers": {"content-type": "text/plain"}},
        415,
        "Content-Type",
    ),
    ({"json": []}, 422, "must be a JSON object"),
    ({"json": {}}, 422, "exactly one of history"),
    ({"json": {"history": ["v0001"], "user": "u1"}}, 422, "exactly one of history"),
    ({"json": {"history": []}}, 422, "history:"),
    ({"json": {"history": "v0001"}}, 422, "history:"),
    ({"json": {"history": [1, 2]}}, 422, "history.0:"),
    ({"json": {"history": [""]}}, 422, "history.0:"),
    ({"json": {"history": ["v0001"] * (MAX_HISTORY + 1)}}, 422, "history:"),
    ({"json": {"history": ["v0001"], "k": 0}}, 422, "k:"),
    ({"json": {"history": ["v0001"], "k": MAX_K + 1}}, 422, "k:"),
    ({"json": {"history": ["v0001"], "k": "3"}}, 422, "k:"),
    ({"json": {"history": ["v0001"], "k": 2.5}}, 422, "k:"),
    ({"json": {"history": ["v0001"], "explain": "yes"}}, 422, "explain:"),
    ({"json": {"history": ["v0001"], "colour": "red"}}, 422, "colour:"),
    ({"json": {"history": ["nope", "nada"]}}, 422, "none of the 2 history item(s)"),
    ({"json": {"user": "nobody"}}, 404, "user 'nobody' is not in this run's interactions"),
]


@pytest.mark.parametrize("request_kw, status, fragment", BAD_REQUESTS)
def test_bad_input_is_a_4xx_with_one_sentence(server, request_kw, status, fragment):
    with server.client() as http:
        got = http.post("/recommend", **request_kw)
        assert got.status_code == status, got.text
        detail = got.json()["detail"]
        assert fragment in detail and "\n" not in detail, detail
        # The server is unharmed: the next good request is answered.
        assert http.post("/recommend", json={"user": "u1"}).status_code == 200


def test_limits_unknown_paths_and_batches_are_4xx(trained_run, serve):
    server = serve(trained_run, "--max-body-kb", "4", "--max-batch", "3")
    with server.client() as http:
        big = http.post("/recommend", json={"history": ["v0001"] * 2000})
        assert big.status_code == 413 and "4 KiB" in big.json()["detail"]

        def chunks():  # no Content-Length: the limit still holds
            yield b'{"history": ['
            for _ in range(1000):
                yield b'"v0001",'
            yield b'"v0002"]}'

        streamed = http.post(
            "/recommend", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        batch = http.post("/recommend/batch", json={"requests": [{"user": "u1"}] * 4})
        assert batch.status_code == 413 and "split it" in batch.json()["detail"]
        bad = http.post("/recommend/batch", json={"requests": [{"user": "u1"}, {"user": "zz"}]})
        assert bad.status_code == 404 and bad.json()["detail"].startswith("requests[1]: ")
        assert http.post("/recommend/batch", json={"requests": []}).status_code == 422
        assert http.get("/nowhere").status_code == 404
        assert "see /docs" in http.get("/nowhere").json()["detail"]
        assert http.get("/recommend").status_code == 405
        missing = http.get("/items/not-an-item")
        assert missing.status_code == 404 and "catalog add" in missing.json()["detail"]


def _raw_exchange(url: str, request: bytes) -> bytes:
    """Send `request` as is on a new connection; everything the server sends until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_http_edges_get_json_4xx_and_health_answers_head(server):
    with server.client() as http:
        for path in ("/healthz", "/readyz"):  # probes often use HEAD
            assert http.head(path).status_code == 200, path
    # A path past the HTTP parser's limits (httpx refuses to send one): the JSON error body
    # every 4xx has, not the server's plain text.
    answer = _raw_exchange(
        server.url, b"GET /items/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" in head, answer
    assert "could not be read as HTTP" in json.loads(body)["detail"]
    with server.client() as http:
        assert http.get("/healthz").status_code == 200  # and the server goes on
    # A body shorter than its Content-Length: 408 after --body-timeout (2 s), connection closed.
    began = time.monotonic()
    answer = _raw_exchange(
        server.url,
        b"POST /recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"user": "u1"',
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert "within 2 s" in json.loads(body)["detail"]
    assert 1.5 < time.monotonic() - began < 20


def test_a_port_in_use_is_refused_in_one_line_before_loading(trained_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_linkedout(["serve", trained_run, "--port", port], timeout=60)
    assert_one_line_error(proc, f"port {port} on 127.0.0.1 is already in use", "--port")
    assert "uvicorn" not in proc.stderr + proc.stdout.lower()


def test_the_bearer_token_guards_rankings_but_not_health(trained_run, serve):
    server = serve(
        trained_run, "--token-env", "LINKEDOUT_TEST_TOKEN", env={"LINKEDOUT_TEST_TOKEN": "s3cret"}
    )
    with server.client() as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            got = http.post("/recommend", json={"user": "u1"}, headers=headers)
            assert got.status_code == 401 and got.headers["www-authenticate"] == "Bearer"
            assert http.get("/metadata", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert http.post("/recommend", json={"user": "u1"}, headers=good).status_code == 200


def test_a_missing_token_variable_is_refused_at_start(trained_run):
    proc = run_linkedout(["serve", trained_run, "--token-env", "LINKEDOUT_UNSET_TOKEN_VAR"])
    assert proc.returncode == 2 and "LINKEDOUT_UNSET_TOKEN_VAR" in proc.stderr


def test_over_capacity_it_sheds_load_with_503_and_retry_after(trained_run, serve):
    server = serve(trained_run, "--max-in-flight", "1", "--max-batch", "256")
    heavy = {"requests": [{"user": f"u{u}", "k": 200, "explain": True} for u in range(256)]}
    statuses, retry_after = [], []
    lock = threading.Lock()

    def client():
        with server.client() as http:
            for _ in range(3):
                got = http.post("/recommend/batch", json=heavy)
                with lock:
                    statuses.append(got.status_code)
                    if got.status_code == 503:
                        retry_after.append(got.headers.get("retry-after"))

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    assert retry_after and all(r == "1" for r in retry_after)
    with server.client() as http:  # once the flood is over, everyone is served again
        assert http.post("/recommend", json={"user": "u1"}).status_code == 200


def test_no_generated_request_gets_a_server_error(server, tmp_path):
    """Schemathesis fuzzes every operation of the service's own OpenAPI schema over HTTP."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "100",
            "--seed",
            "1",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # its cache folder goes there, not into the checkout
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/readyz").status_code == 200


def test_concurrent_requests_merged_into_one_pass_each_get_their_own_answer(server):
    """Requests that wait together are ranked in one pass; an unknown user among them fails
    alone, and everyone else gets the ranking they get when asking alone."""
    bodies = [{"user": f"u{u}", "k": 5} for u in range(24)] + [{"user": "ghost"}] * 4
    with server.client() as http:
        alone = [http.post("/recommend", json=b) for b in bodies]
    together: list = [None] * len(bodies)

    def ask(i):
        with server.client() as http:
            together[i] = http.post("/recommend", json=bodies[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        assert a.status_code == b.status_code
        if a.status_code == 200:
            ids = [[i["item_id"] for i in r.json()["items"]] for r in (a, b)]
            assert ids[0] == ids[1]
        else:
            assert a.status_code == 404 and a.json() == b.json()


def test_several_worker_processes_answer_alike_and_stop_on_sigterm(trained_run, serve):
    server = serve(trained_run, "--workers", "2")
    with server.client() as http:
        answers = [http.post("/recommend", json={"user": "u3", "k": 4}).json() for _ in range(6)]
    assert all(a == answers[0] for a in answers) and len(answers[0]["items"]) == 4
