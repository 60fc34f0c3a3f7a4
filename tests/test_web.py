"""The web view in a real browser: Playwright driving Debian's Chromium against the pages
served by uvicorn on loopback, over a store filled by a real MCTS run on the sim model, a
sweep, and a synthetic tree of 5,000 nodes.

Screenshots of every page land in ``test-artifacts/`` (gitignored) for a person to look
at; ``test-artifacts/web-timings.json`` records what the browser measured on the large
tree. Without Chromium or Playwright the browser tests skip with the install command
(in CI they fail instead). The tests at the end need no browser: they read the pages'
HTML as served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import random
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from deliberate.config import RunConfig
from deliberate.engine.runner import arun
from deliberate.evals.sweep import SweepConfig, arun_sweep
from deliberate.server import api, pages
from deliberate.store import Store
from deliberate.tree import AttemptRecord, JudgementRecord, NodeRecord, RunRecord, make_id
from tests.conftest import REPO, in_ci

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
INSTALL = "apt-get install -y chromium && pip install playwright"
ARTIFACTS = REPO / "test-artifacts"
VIEWPORT = {"width": 1366, "height": 768}
BIG = 5000


def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        return f"{CHROMIUM} is not installed"
    return None


def need_browser() -> None:
    missing = browser_missing()
    if missing is None:
        return
    if in_ci():
        pytest.fail(f"CI needs the browser tests: {missing} ({INSTALL})")
    pytest.skip(f"{missing}: {INSTALL}")


# ------------------------------------------------------------------ the data


@dataclasses.dataclass
class Site:
    url: str
    db: str
    run_id: str
    sweep_id: str
    big_run: str


def mcts_config(db: str) -> RunConfig:
    return RunConfig.model_validate({
        "suite": "arithmetic", "limit": 4, "strategy": "mcts",
        "strategy_params": {"iterations": 8, "k": 2}, "model": "sim?skill=-0.3",
        "store": db, "cache": False, "seed": 5})


async def synthetic_tree(store: Store, run_id: str, n: int, seed: int = 0) -> None:
    """A search tree of ``n`` nodes (at most four children each, attached at random),
    half of them graded, the chosen path ending at the deepest node."""
    rng = random.Random(seed)
    await store.create_run(RunRecord(id=run_id, status="done",
                                     config={"strategy": "mcts", "suite": "synthetic",
                                             "model": "none"},
                                     summary={"tasks": 1}))
    root = NodeRecord(id=make_id(run_id, "root"), run_id=run_id, task_id="big",
                      parent_id=None, role="task", operator="root",
                      text="A synthetic task with a large tree", visits=n, value=0.5,
                      created_at=1000.0)
    nodes, kids = [root], {root.id: 0}
    for i in range(1, n):
        while True:
            parent = nodes[rng.randrange(len(nodes))]
            if kids[parent.id] < 4:
                break
        kids[parent.id] += 1
        node = NodeRecord(id=make_id(run_id, i), run_id=run_id, task_id="big",
                          parent_id=parent.id, role="generator",
                          operator="generate" if parent is root else "refine",
                          text=f"candidate {i}: " + "word " * rng.randrange(3, 30),
                          answer=str(rng.randrange(20)), depth=parent.depth + 1,
                          visits=rng.randrange(1, 9), value=round(rng.random(), 3),
                          created_at=1000.0 + i)
        nodes.append(node)
        kids[node.id] = 0
        if rng.random() < 0.5:
            ok = rng.random() < 0.4
            store.put_judgement(JudgementRecord(
                id=make_id(run_id, "grade", i), run_id=run_id, task_id="big", node_id=node.id,
                source="verifier:answer_match", role="grader", score=float(ok),
                scale_min=0.0, scale_max=1.0, verdict="correct" if ok else "incorrect"))
    by_id = {x.id: x for x in nodes}
    end = max(nodes, key=lambda x: x.depth)
    cur: NodeRecord | None = end
    while cur is not None:
        cur.meta = {"chosen": True}
        cur = by_id.get(cur.parent_id) if cur.parent_id else None
    for node in nodes:
        store.put_node(node)
    store.put_attempt(AttemptRecord(run_id=run_id, task_id="big", status="done",
                                    root_id=root.id, final_node_id=end.id, answer=end.answer,
                                    stats={"nodes": n, "depth": end.depth}))
    await store.flush()


async def fill(db: str) -> tuple[str, str]:
    res = await arun(mcts_config(db))
    async with await Store.aopen(db) as store:
        sweep = SweepConfig.from_mapping({"base": {"limit": 2, "cache": False, "seed": 5},
                                          "strategies": ["best_of_n:n=1,2"],
                                          "models": ["sim?skill=0.3"]})
        await arun_sweep(sweep, sweep_id="sweep-1", store=store)
        await synthetic_tree(store, "synthetic-5000", BIG)
    return res.run_id, "sweep-1"


def run_async(coro: Any) -> Any:
    """Run a coroutine to its end on a thread of its own: Playwright's sync API keeps an
    event loop running on this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def read(db: str, fn: Any) -> Any:
    """Run ``fn(store)`` on a store of its own (the server holds another)."""
    async def go() -> Any:
        async with await Store.aopen(db) as store:
            return await fn(store)

    return run_async(go())


# ------------------------------------------------------------------ the server


def make_app(db: str) -> FastAPI:
    """The two routers in the smallest app, the store opened by its lifespan as the real
    server's app does (``app.state.store``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with await Store.aopen(db) as store:
            app.state.store = store
            yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(api.router)
    app.include_router(pages.router)
    return app


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Uvicorn in a thread on a free loopback port (as the sim server's tests do)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level=None,
                                           access_log=False, lifespan="on", ws="none",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    db = str(tmp_path_factory.mktemp("web") / "runs.db")
    run_id, sweep_id = run_async(fill(db))
    with serving(make_app(db)) as url:
        yield Site(url=url, db=db, run_id=run_id, sweep_id=sweep_id, big_run="synthetic-5000")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield pg
    context.close()
    assert errors == [], errors  # no script error, no failed request, no CSP violation


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"web-{name}.png"
    page.screenshot(path=str(path))
    return path


def svg_data(page: Any) -> dict[str, str]:
    return dict(page.evaluate("() => ({...document.getElementById('tree-svg').dataset})"))


def open_tree(page: Any, site: Site, run_id: str, task_id: str, query: str = "") -> None:
    page.goto(f"{site.url}/runs/{run_id}/tasks/{task_id}{query}")
    page.wait_for_selector("#tree-app[data-ready=true]", timeout=20_000)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# ------------------------------------------------------------------ pages in the browser


def test_runs_list_shows_every_run_with_its_metrics(page: Any, site: Site) -> None:
    runs = read(site.db, lambda s: s.list_runs(limit=200))
    page.goto(f"{site.url}/runs")
    rows = page.locator("table#runs tbody tr")
    assert rows.count() == len(runs) == 5  # the MCTS run, the sweep, two cells, the large tree
    assert rows.locator("th a").all_inner_texts() == [r.id for r in runs]
    row = page.locator(f"tr[data-run-id='{site.run_id}']")
    mcts = next(r for r in runs if r.id == site.run_id)
    cells = row.locator("td").all_inner_texts()
    assert cells[1:5] == ["done", "mcts", "arithmetic", "sim?skill=-0.3"]
    assert cells[5:8] == [str(mcts.summary["tasks"]), pct(mcts.summary["accuracy"]),
                          f"{mcts.summary['prompt_tokens'] + mcts.summary['completion_tokens']:,}"]
    assert page.locator(f"tr[data-run-id='{site.sweep_id}'] .badge.sweep").inner_text() == "sweep"
    assert page.locator("tr[data-kind='cell'] .badge.cell").count() == 2
    shot(page, "runs")


def test_run_page_lists_its_tasks(page: Any, site: Site) -> None:
    attempts = read(site.db, lambda s: s.get_attempts(site.run_id))
    page.goto(f"{site.url}/runs/{site.run_id}")
    assert page.locator("h1").inner_text().startswith(f"Run {site.run_id}")
    rows = page.locator("table#tasks tbody tr")
    assert rows.count() == len(attempts)
    for a in attempts:
        row = page.locator(f"tr[data-task-id='{a.task_id}']")
        assert row.locator(".answer").inner_text() == a.answer
        assert row.locator(".verdict").inner_text() == ("✓ correct" if a.correct else "✗ wrong")
    graded = [a for a in attempts if a.correct is not None]
    acc = sum(bool(a.correct) for a in graded) / len(graded)
    assert page.locator(".metrics dd.accuracy").inner_text() == pct(acc)
    shot(page, "run")
    page.goto(f"{site.url}/runs/{site.sweep_id}")
    assert page.locator("table#cells tbody tr").count() == 2
    shot(page, "sweep")


def pick_task(site: Site) -> tuple[str, list[NodeRecord], list[JudgementRecord]]:
    """The task whose tree shows most: a wrong final answer, right and wrong candidates."""
    async def go(store: Store) -> tuple[str, list[NodeRecord], list[JudgementRecord]]:
        best = None
        for a in await store.get_attempts(site.run_id):
            nodes, judgements = await store.load_tree(site.run_id, a.task_id)
            verdicts = {j.verdict for j in judgements if j.role == "grader"}
            score = (a.correct is False, len(verdicts), len(nodes))
            if best is None or score > best[0]:
                best = (score, a.task_id, nodes, judgements)
        assert best is not None
        return best[1], best[2], best[3]

    result: tuple[str, list[NodeRecord], list[JudgementRecord]] = read(site.db, go)
    return result


def test_tree_of_an_mcts_run_is_drawn_with_its_chosen_path(page: Any, site: Site) -> None:
    task_id, nodes, judgements = pick_task(site)
    open_tree(page, site, site.run_id, task_id)
    chosen = [n for n in nodes if n.meta.get("chosen")]
    assert len(chosen) >= 2
    assert page.locator("g.node").count() == len(nodes)  # a small tree opens whole
    assert svg_data(page)["shown"] == str(len(nodes))
    assert page.locator("g.node.chosen").count() == len(chosen)
    assert page.locator("path.edge.chosen").count() == len(chosen) - 1
    assert page.locator("path.edge").count() == len(nodes) - 1
    ids = set(page.locator("g.node.chosen").evaluate_all("gs => gs.map(g => g.dataset.id)"))
    assert ids == {n.id for n in chosen}
    # Every node box says its operator, answer and value; the legend names the scale.
    for n in nodes:
        label = page.locator(f"g.node[data-id='{n.id}']").get_attribute("aria-label")
        assert label is not None and label.startswith("task" if n.operator == "root"
                                                      else n.operator)
        if n.operator != "root" and n.answer is not None:
            assert f"answer {n.answer}" in label
        if n.value is not None:
            assert f"value {n.value:.2f}" in label
    assert "value" in page.locator("#legend").inner_text()
    fills = set(page.locator("g.node rect.box").evaluate_all(
        "rs => rs.map(r => r.getAttribute('fill'))"))
    assert len(fills) > 1  # coloured by value, and the values differ
    shot(page, "tree")
    # By verdict: the grader's labels, counted as the store has them.
    graded = {j.node_id: j.verdict for j in judgements if j.role == "grader"}
    page.select_option("#colour-by", "verdict")
    assert page.locator("g.node.correct").count() == list(graded.values()).count("correct") > 0
    assert page.locator("g.node.incorrect").count() == list(graded.values()).count(
        "incorrect") > 0
    assert page.locator("#legend").inner_text().split() == [
        "✓", "correct", "✗", "incorrect", "not", "graded", "chosen", "path"]
    shot(page, "tree-verdict")


def test_a_node_s_detail_shows_its_output_judgements_calls_and_diff(page: Any,
                                                                    site: Site) -> None:
    task_id, nodes, judgements = pick_task(site)
    by_id = {n.id: n for n in nodes}
    refined = [n for n in nodes if n.operator == "refine" and n.text != by_id[
        n.parent_id or ""].text]
    assert refined
    node = refined[0]
    api_detail = httpx.get(f"{site.url}/api/runs/{site.run_id}/tasks/{task_id}/nodes/"
                           f"{node.id}").json()
    open_tree(page, site, site.run_id, task_id)
    page.locator(f"g.node[data-id='{node.id}'] rect.box").click()
    detail = page.locator("#detail")
    page.wait_for_selector("#detail[data-node-id]")
    assert detail.is_visible()
    assert page.locator("#detail-title").inner_text().startswith("refine node")
    assert page.locator("pre.output").inner_text() == node.text
    assert page.locator(f"g.node[data-id='{node.id}']").get_attribute("class") is not None
    assert "selected" in (page.locator(f"g.node[data-id='{node.id}']").get_attribute("class")
                          or "")
    own = [j for j in judgements if j.node_id == node.id]
    assert page.locator("#detail-body h3", has_text="Judgements").inner_text() == (
        f"Judgements ({len(own)})")
    assert page.locator("article.judgement").count() == len(own)
    critiques = [j.critique for j in own if j.critique]
    assert page.locator("pre.critique").all_inner_texts() == critiques
    assert page.locator("#detail-body h3", has_text="Model calls").inner_text() == (
        f"Model calls ({len(api_detail['calls'])})")
    assert page.locator("tr.call").count() == len(api_detail["calls"]) > 0
    inserted = [o["text"] for o in api_detail["diff"] if o["op"] == "insert"]
    deleted = [o["text"] for o in api_detail["diff"] if o["op"] == "delete"]
    assert page.locator("pre.diff ins").all_inner_texts() == inserted and inserted
    assert page.locator("pre.diff del").all_inner_texts() == deleted
    prompt = page.locator("#detail-body section", has_text="Prompt").locator(".message")
    maker = next(c for c in api_detail["calls"] if c["id"] == node.call_id)
    assert prompt.count() == len(maker["messages"])
    assert f"node={node.id}" in page.url
    shot(page, "node-detail")
    page.locator("tr.call-more summary").first.click()
    page.locator("#detail-body").evaluate("e => e.scrollTop = e.scrollHeight")
    shot(page, "node-detail-calls")
    # Escape closes the panel and gives the focus back to the node.
    page.keyboard.press("Escape")
    assert detail.is_hidden()
    assert page.evaluate("() => document.activeElement.dataset.id") == node.id
    assert "node=" not in page.url
    # A link to a node opens it.
    open_tree(page, site, site.run_id, task_id, f"?node={node.id}")
    page.wait_for_selector(f"#detail[data-node-id='{node.id}']")
    assert page.locator("pre.output").inner_text() == node.text


def test_the_tree_is_usable_by_keyboard(page: Any, site: Site) -> None:
    task_id, nodes, _ = pick_task(site)
    root = next(n for n in nodes if n.parent_id is None)
    chosen_child = next(n for n in nodes if n.parent_id == root.id and n.meta.get("chosen"))
    open_tree(page, site, site.run_id, task_id)
    # Tab from the page's start reaches the tree's one tab stop, the root, past the toolbar.
    for _ in range(25):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.dataset.id || null") == root.id:
            break
    else:
        pytest.fail("Tab never reached the tree")
    ring = page.locator(f"g.node[data-id='{root.id}'] rect.ring")
    assert ring.evaluate("r => getComputedStyle(r).stroke") != "none"  # visible focus
    page.keyboard.press("ArrowDown")
    assert page.evaluate("() => document.activeElement.dataset.id") == chosen_child.id
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#detail[data-node-id='{chosen_child.id}']")
    page.keyboard.press("Escape")
    assert page.locator("#detail").is_hidden()
    below = sum(1 for n in nodes if n.id != chosen_child.id and is_below(n, chosen_child, nodes))
    page.keyboard.press("c")
    assert svg_data(page)["shown"] == str(len(nodes) - below)
    assert page.locator(f"g.node[data-id='{chosen_child.id}']").get_attribute(
        "aria-expanded") == "false"
    shot(page, "tree-collapsed")
    page.keyboard.press(" ")  # Space opens the node too
    page.wait_for_selector(f"#detail[data-node-id='{chosen_child.id}']")
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")  # the node's knob is the next stop; Enter expands
    assert page.evaluate("() => document.activeElement.classList.contains('knob')")
    page.keyboard.press("Enter")
    assert svg_data(page)["shown"] == str(len(nodes))
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("ArrowUp")
    assert page.evaluate("() => document.activeElement.dataset.id") == root.id
    page.keyboard.press("ArrowRight")  # no neighbour on the root's level: focus stays
    assert page.evaluate("() => document.activeElement.dataset.id") == root.id


def is_below(n: NodeRecord, top: NodeRecord, nodes: list[NodeRecord]) -> bool:
    by_id = {x.id: x for x in nodes}
    cur = by_id.get(n.parent_id or "")
    while cur is not None:
        if cur.id == top.id:
            return True
        cur = by_id.get(cur.parent_id or "")
    return False


def test_report_page(page: Any, site: Site) -> None:
    page.goto(f"{site.url}/runs/{site.run_id}")
    link = page.locator("a", has_text="Evaluation report")
    if pages.report_renderer() is None:
        assert link.count() == 0
        return
    link.click()
    page.wait_for_load_state()
    assert page.url == f"{site.url}/runs/{site.run_id}/report"
    frame = page.frame_locator("iframe.report-frame")
    assert site.run_id in frame.locator("h1").inner_text()
    assert "mcts" in frame.locator("h1").inner_text()
    assert frame.locator("figure img").count() >= 1
    shot(page, "report")
    frame.locator("figure").first.scroll_into_view_if_needed()
    assert frame.locator("figure img").first.evaluate("i => i.complete && i.naturalWidth > 0")
    shot(page, "report-figure")
    page.goto(f"{site.url}/runs/{site.sweep_id}/report")
    sweep = page.frame_locator("iframe.report-frame")
    assert sweep.locator("h1").inner_text().startswith("Sweep")
    assert sweep.locator("figure img").count() >= 1
    shot(page, "report-sweep")
    sweep.locator("figure").first.scroll_into_view_if_needed()
    shot(page, "report-sweep-figure")


def test_a_tree_of_5000_nodes(page: Any, site: Site) -> None:
    nodes, _ = read(site.db, lambda s: s.load_tree(site.big_run, "big"))
    assert len(nodes) == BIG
    chosen = [n for n in nodes if n.meta.get("chosen")]
    chosen_ids = {n.id for n in chosen}
    siblings = sum(1 for n in nodes if n.parent_id in chosen_ids)
    started = time.monotonic()
    open_tree(page, site, site.big_run, "big")
    opened_s = time.monotonic() - started
    # At first: the chosen path, each step with its siblings (collapsed).
    data = svg_data(page)
    assert data["shown"] == str(1 + siblings)
    assert page.locator("g.node.chosen").count() >= 2
    assert int(data["drawn"]) <= 1 + siblings
    timings: dict[str, Any] = {"nodes": BIG, "open_page_s": round(opened_s, 3),
                               "first_draw": data}
    shot(page, "big-initial")
    page.click("#btn-expand")
    page.wait_for_function(f"() => document.getElementById('tree-svg').dataset.shown === "
                           f"'{BIG}' && document.getElementById('tree-svg').dataset.paintMs")
    data = svg_data(page)
    timings["expand_all"] = data
    assert page.locator("#tree-svg.overview").count() == 1  # fitted: drawn in bulk
    assert page.locator("path.overview-box").count() >= 2
    shot(page, "big-overview")
    # Zoom in on a node: elements again, only those near the screen.
    box = page.locator("#tree-svg").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 3)
    page.wait_for_function("() => !document.getElementById('tree-svg').classList"
                           ".contains('overview')")
    drawn = page.locator("g.node").count()
    assert 0 < drawn < BIG
    timings["zoomed_in"] = svg_data(page)
    shot(page, "big-zoomed")
    # Collapse the root by keyboard, then open it all again.
    page.keyboard.press("Home")
    page.keyboard.press("c")
    assert svg_data(page)["shown"] == "1"
    timings["collapse_root"] = svg_data(page)
    page.keyboard.press("c")
    assert svg_data(page)["shown"] == str(BIG)
    timings["expand_root"] = svg_data(page)
    # What the API takes to serve this tree and one node of it (the node's detail reads
    # only that node's rows, Store.load_node).
    base = f"{site.url}/api/runs/{site.big_run}/tasks/big"
    t = time.monotonic()
    r = httpx.get(f"{base}/tree")
    timings["api_tree"] = {"s": round(time.monotonic() - t, 3), "bytes": len(r.content)}
    assert len(r.json()["nodes"]) == BIG
    t = time.monotonic()
    r = httpx.get(f"{base}/nodes/{chosen[-1].id}")
    timings["api_node"] = {"s": round(time.monotonic() - t, 3), "bytes": len(r.content)}
    assert r.json()["node"]["id"] == chosen[-1].id
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "web-timings.json").write_text(json.dumps(timings, indent=1) + "\n")


# ------------------------------------------------------------------ pages as HTML


@pytest.fixture
def small_site(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A run of one task and a run whose texts are markup, served on loopback."""
    db = str(tmp_path / "runs.db")

    async def go() -> str:
        res = await arun(mcts_config(db).model_copy(update={"limit": 1}))
        async with await Store.aopen(db) as store:
            await store.create_run(RunRecord(
                id="evil", status="done", summary={"tasks": 1},
                config={"strategy": EVIL, "suite": "s", "model": EVIL}))
            store.put_attempt(AttemptRecord(run_id="evil", task_id="t<b>", status="done",
                                            answer=EVIL))
        return res.run_id

    run_id = run_async(go())
    with serving(make_app(db)) as url:
        yield url, db, run_id


EVIL = "<script>alert(1)</script>"


def test_pages_escape_what_models_wrote(small_site: tuple[str, str, str]) -> None:
    url, _, _ = small_site
    for path in ("/runs", "/runs/evil", "/runs/evil/tasks/t%3Cb%3E"):
        r = httpx.get(url + path)
        assert r.status_code == 200, path
        assert EVIL not in r.text and "&lt;script&gt;" in r.text, path
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "<script>" not in r.text.replace('<script src="/static/web/tree.js" defer>', "")


def test_pages_link_runs_tasks_exports_and_report(small_site: tuple[str, str, str]) -> None:
    url, db, run_id = small_site
    r = httpx.get(url + "/")
    assert r.status_code == 307 and r.headers["location"] == "/runs"
    runs = httpx.get(url + "/runs").text
    assert f'href="/runs/{run_id}"' in runs
    run = httpx.get(f"{url}/runs/{run_id}").text
    task = read(db, lambda s: s.get_attempts(run_id))[0].task_id
    assert f'href="/runs/{run_id}/tasks/{task}"' in run
    assert f'href="/api/runs/{run_id}/export/dpo?format=jsonl"' in run
    assert (f'href="/runs/{run_id}/report"' in run) == (pages.report_renderer() is not None)
    tree = httpx.get(f"{url}/runs/{run_id}/tasks/{task}").text
    assert f'data-tree-url="/api/runs/{run_id}/tasks/{task}/tree"' in tree
    assert f'data-node-url="/api/runs/{run_id}/tasks/{task}/nodes/__NODE__"' in tree


def test_missing_pages_and_static_files(small_site: tuple[str, str, str]) -> None:
    url, _, run_id = small_site
    for path in ("/runs/nope", f"/runs/{run_id}/tasks/nope", "/runs/nope/tasks/x",
                 "/runs/nope/report"):
        r = httpx.get(url + path)
        assert r.status_code == 404 and "Not found" in r.text, path
    css = httpx.get(url + "/static/web/style.css")
    js = httpx.get(url + "/static/web/tree.js")
    assert css.headers["content-type"].startswith("text/css") and ".node" in css.text
    assert js.headers["content-type"].startswith("text/javascript") and "tidy" in js.text
    assert httpx.get(url + "/static/web/pages.py").status_code == 404
    assert httpx.get(url + "/static/web/%2E%2E%2Fpages.py").status_code == 404
