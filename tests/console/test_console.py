"""The console over real loopback HTTP: sign-in, sessions and CSRF, tenants and scopes, and each page's
actions (answer, cancel, replay, canary control) reaching the runtime."""

from __future__ import annotations

from contextlib import aclosing

import console_agents
import pytest

from conftest import LOGIN_TOKEN, Served
from tether.types import RunStatus


async def waiting_question(
    served: Served, principal: str = "ada", tenant: str | None = "acme"
) -> tuple[str, str]:
    """A desk run waiting for approval of a $150 refund: (run id, question id)."""
    run = await served.start("desk", principal, tenant)
    assert (await served.settled(run.id)).status == RunStatus.WAITING_HUMAN
    [question] = await served.runtime.inbox(tenants=[tenant])
    return run.id, question.id


async def test_pages_send_you_to_sign_in_first(served: Served) -> None:
    """Without a session every page redirects to the sign-in page, remembering where you were going."""
    async with served.browser() as client:
        for path in ("/console", "/console/inbox", "/console/runs?status=failed", "/console/status"):
            response = await client.get(path)
            assert response.status_code == 303, path
            location = response.headers["location"]
            assert location.startswith("/console/login") or location == "/console/inbox", path
        assert (await client.get("/console/runs?status=failed")).headers["location"] == (
            "/console/login?next=%2Fconsole%2Fruns%3Fstatus%3Dfailed"
        )


async def test_a_wrong_key_is_refused_and_no_session_is_made(served: Served) -> None:
    """Signing in with an unknown key answers 401 with the reason and sets no session cookie."""
    async with served.browser() as client:
        token = LOGIN_TOKEN.search((await client.get("/console/login")).text)
        assert token is not None
        response = await client.post(
            "/console/login", data={"key": "tth_not-a-key-at-all", "token": token.group(1)}
        )
        assert response.status_code == 401
        assert "not valid" in response.text
        assert "tether_console=" not in response.headers.get("set-cookie", "")
        assert (await client.get("/console/inbox")).status_code == 303


async def test_sign_in_without_the_forms_token_is_refused(served: Served) -> None:
    """A sign-in posted from elsewhere (no login token cookie) is refused: no login CSRF."""
    async with served.browser() as client:
        response = await client.post(
            "/console/login", data={"key": served.secrets["acme"], "token": "forged"}
        )
        assert response.status_code == 400
        assert "expired" in response.text
        assert (await client.get("/console/inbox")).status_code == 303


async def test_cookies_and_headers_are_locked_down(served: Served) -> None:
    """The session cookie is HttpOnly and SameSite=Strict; pages carry a CSP that forbids scripts."""
    async with served.browser() as client:
        page = await client.get("/console/login")
        token = LOGIN_TOKEN.search(page.text)
        assert token is not None
        signed = await client.post(
            "/console/login", data={"key": served.secrets["acme"], "token": token.group(1)}
        )
        cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith("tether_console="))
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Path=/console" in cookie
        inbox = await client.get("/console/inbox")
        assert "script-src" not in inbox.headers["content-security-policy"]  # default-src 'none' covers it
        assert "default-src 'none'" in inbox.headers["content-security-policy"]
        assert inbox.headers["x-content-type-options"] == "nosniff"
        assert served.secrets["acme"] not in inbox.text


async def test_sign_in_goes_back_only_inside_the_console(served: Served) -> None:
    """`next` pointing off the console (an open redirect) lands on the inbox instead."""
    async with served.browser() as client:
        for target in (
            "https://evil.example/",
            "//evil.example/console",
            "/api/runs",
            "/console/runs?status=failed",
        ):
            token = LOGIN_TOKEN.search((await client.get("/console/login")).text)
            assert token is not None
            response = await client.post(
                "/console/login",
                data={"key": served.secrets["acme"], "token": token.group(1), "next": target},
            )
            expected = target if target.startswith("/console/") else "/console/inbox"
            assert response.headers["location"] == expected, target


async def test_answering_an_approval_resumes_the_run_once(served: Served) -> None:
    """Approve in the inbox: the run resumes on the worker, the refund runs once, the question is closed."""
    run_id, question_id = await waiting_question(served)
    client, csrf = await served.signed_in("acme")
    async with aclosing(client):
        inbox = await client.get("/console/inbox")
        assert question_id in inbox.text
        assert "refund" in inbox.text
        assert "150" in inbox.text
        answer = await client.post(
            f"/console/inbox/{question_id}/answer", data={"csrf": csrf, "choice": "approve"}
        )
        assert answer.status_code == 303
        assert (await served.settled(run_id)).status == RunStatus.SUCCEEDED
        assert console_agents.REFUNDS == [("A-1", 150)]
        after = await client.get("/console/inbox")
        assert "Answered &#39;approve&#39;" in after.text
        assert question_id not in after.text.replace(f"#{question_id}", "")
        again = await client.post(
            f"/console/inbox/{question_id}/answer", data={"csrf": csrf, "choice": "deny"}
        )
        assert again.status_code == 303
        assert "already answered" in (await client.get("/console/inbox")).text
    assert console_agents.REFUNDS == [("A-1", 150)]


async def test_edited_arguments_are_what_runs(served: Served) -> None:
    """Approving with edited JSON arguments runs the call with those arguments."""
    run_id, question_id = await waiting_question(served)
    client, csrf = await served.signed_in("acme")
    async with aclosing(client):
        edit = '{"order_id": "A-1", "amount_usd": 90}'
        await client.post(
            f"/console/inbox/{question_id}/answer", data={"csrf": csrf, "choice": "edit", "text_edit": edit}
        )
    assert (await served.settled(run_id)).status == RunStatus.SUCCEEDED
    assert console_agents.REFUNDS == [("A-1", 90)]


async def test_a_denial_reaches_the_agent_and_nothing_runs(served: Served) -> None:
    """Deny with a message: the refund never runs and the agent sees the message."""
    run_id, question_id = await waiting_question(served)
    client, csrf = await served.signed_in("acme")
    async with aclosing(client):
        await client.post(
            f"/console/inbox/{question_id}/answer",
            data={"csrf": csrf, "choice": "deny", "text_deny": "Order A-1 was already refunded"},
        )
    assert (await served.settled(run_id)).status == RunStatus.SUCCEEDED
    assert console_agents.REFUNDS == []
    events = await served.runtime.events(run_id)
    assert any("Order A-1 was already refunded" in str(event.data) for event in events)


async def test_bad_edit_is_refused_and_the_text_is_kept(served: Served) -> None:
    """Edited arguments that are not JSON get the reason, the typed text back, and the question stays open."""
    run_id, question_id = await waiting_question(served)
    client, csrf = await served.signed_in("acme")
    async with aclosing(client):
        response = await client.post(
            f"/console/inbox/{question_id}/answer",
            data={"csrf": csrf, "choice": "edit", "text_edit": '{"amount_usd": 90'},
        )
        assert response.status_code == 422
        assert "JSON" in response.text
        assert "{&#34;amount_usd&#34;: 90" in response.text
    assert (await served.runtime.store.get_escalation(question_id)).status == "open"
    assert (await served.runtime.store.get_run(run_id)).status == RunStatus.WAITING_HUMAN


@pytest.mark.parametrize("forgery", ["no-token", "wrong-token", "other-origin"])
async def test_forged_forms_change_nothing(served: Served, forgery: str) -> None:
    """A form without the session's CSRF token, or posted from another origin, is refused with 403."""
    run_id, question_id = await waiting_question(served)
    client, csrf = await served.signed_in("acme")
    data = {"choice": "approve"}
    headers = {}
    if forgery == "wrong-token":
        data["csrf"] = csrf[:-2] + "xx"
    elif forgery == "other-origin":
        data["csrf"] = csrf
        headers["Origin"] = "https://evil.example"
    async with aclosing(client):
        response = await client.post(f"/console/inbox/{question_id}/answer", data=data, headers=headers)
    assert response.status_code == 403
    assert (await served.runtime.store.get_escalation(question_id)).status == "open"
    assert (await served.runtime.store.get_run(run_id)).status == RunStatus.WAITING_HUMAN


async def test_another_tenants_things_are_not_found(served: Served) -> None:
    """globex sees none of acme's runs or questions: not listed, 404 by id, and not answerable."""
    run_id, question_id = await waiting_question(served, principal="ada-of-acme")
    client, csrf = await served.signed_in("globex")
    async with aclosing(client):
        assert "ada-of-acme" not in (await client.get("/console/runs")).text
        assert question_id not in (await client.get("/console/inbox")).text
        assert (await client.get(f"/console/runs/{run_id}")).status_code == 404
        refused = await client.post(
            f"/console/inbox/{question_id}/answer", data={"csrf": csrf, "choice": "approve"}
        )
        assert refused.status_code == 404
        assert (await client.post(f"/console/runs/{run_id}/cancel", data={"csrf": csrf})).status_code == 404
        assert "ada-of-acme" not in (await client.get("/console/cost?window=30d")).text
    assert (await served.runtime.store.get_escalation(question_id)).status == "open"


async def test_scopes_limit_what_a_key_can_do(served: Served) -> None:
    """A read-only key sees the inbox without answer forms, cannot answer, and has no dead-letter page."""
    run_id, question_id = await waiting_question(served)
    client, csrf = await served.signed_in("acme-reader")
    async with aclosing(client):
        inbox = await client.get("/console/inbox")
        assert question_id in inbox.text
        assert 'value="approve"' not in inbox.text
        assert "Dead letters" not in inbox.text
        refused = await client.post(
            f"/console/inbox/{question_id}/answer", data={"csrf": csrf, "choice": "approve"}
        )
        assert refused.status_code == 403
        assert "inbox:answer" in refused.text
        assert (await client.get("/console/dead-letters")).status_code == 403
        assert "Cancel run" not in (await client.get(f"/console/runs/{run_id}")).text
    assert (await served.runtime.store.get_escalation(question_id)).status == "open"


async def test_signing_out_ends_the_session(served: Served) -> None:
    """After signing out, the old session cookie opens nothing."""
    client, csrf = await served.signed_in("acme")
    async with aclosing(client):
        cookie = client.cookies.get("tether_console")
        assert (await client.post("/console/logout", data={"csrf": csrf})).status_code == 303
    async with served.browser() as stale:
        stale.cookies.set("tether_console", cookie or "", path="/console")
        assert (await stale.get("/console/inbox")).status_code == 303


async def test_run_page_shows_the_trace_and_the_events(served: Served) -> None:
    """A finished run's page draws its spans (root, chat, tool, escalation) and lists every event."""
    run_id, question_id = await waiting_question(served)
    await served.runtime.answer(question_id, "approve", by="test")
    assert (await served.settled(run_id)).status == RunStatus.SUCCEEDED
    client, _ = await served.signed_in("acme")
    async with aclosing(client):
        page = (await client.get(f"/console/runs/{run_id}")).text
    for kind in ("root", "chat", "tool", "escalation"):
        assert f'class="span {kind}' in page, kind
    assert "execute_tool refund" in page
    assert "approval" in page
    assert page.count('class="span chat') == 2
    events = await served.runtime.events(run_id)
    assert page.count("<code>run.") + page.count("<code>model.") >= 3
    assert f">{events[-1].seq}<" in page


async def test_a_running_run_refreshes_itself(served: Served) -> None:
    """A run still going reloads its page every 2 s (with a root bar "so far"); a settled one does not."""
    finished = await served.settled((await served.start("echo", "bo", "acme")).id)
    held = await served.start("echo", "cy", "acme")
    assert await served.runtime.store.claim_run("elsewhere", 60.0, run_id=held.id) is not None
    client, _ = await served.signed_in("operator")
    async with aclosing(client):
        going = (await client.get(f"/console/runs/{held.id}")).text
        done = (await client.get(f"/console/runs/{finished.id}")).text
    assert 'http-equiv="refresh"' in going
    assert "so far" in going
    assert 'http-equiv="refresh"' not in done


async def test_replaying_a_dead_letter_from_the_console(served: Served) -> None:
    """An admin replays a dead letter from its page; the worker then finishes the run."""
    run_id = await served.dead_letter("cy", "acme")
    client, csrf = await served.signed_in("operator")
    async with aclosing(client):
        listing = await client.get("/console/dead-letters")
        assert run_id in listing.text
        replayed = await client.post(f"/console/dead-letters/{run_id}/replay", data={"csrf": csrf})
        assert replayed.status_code == 303
        assert (await served.settled(run_id)).status == RunStatus.SUCCEEDED
        assert "nothing to replay" not in (await client.get(f"/console/runs/{run_id}")).text
        await client.post(f"/console/dead-letters/{run_id}/replay", data={"csrf": csrf})
        assert "not dead-lettered: nothing to replay" in (await client.get(f"/console/runs/{run_id}")).text


async def test_cancelling_from_the_console(served: Served) -> None:
    """Cancelling a waiting run from its page ends it cancelled, with the reason and the key's id."""
    run_id, question_id = await waiting_question(served)
    client, csrf = await served.signed_in("acme")
    async with aclosing(client):
        await client.post(
            f"/console/runs/{run_id}/cancel", data={"csrf": csrf, "reason": "customer withdrew"}
        )
    run = await served.runtime.store.get_run(run_id)
    assert run.status == RunStatus.CANCELLED
    assert run.error is not None
    assert run.error.startswith("customer withdrew (by key_")
    assert (await served.runtime.store.get_escalation(question_id)).status == "cancelled"


async def test_cost_page_charts_customers_and_versions(served: Served) -> None:
    """Cost per customer and per agent version shows each one's total, costliest first."""
    for principal in ("ada", "ada", "bob"):
        await served.settled((await served.start("echo", principal, "acme")).id)
    client, _ = await served.signed_in("acme")
    async with aclosing(client):
        page = (await client.get("/console/cost")).text
    assert "Cost per customer" in page
    assert "Cost per agent version" in page
    assert page.index(">ada<") < page.index(">bob<")
    assert "$0.0020" in page
    assert "$0.0010" in page
    assert "console-echo v1" in page
    assert "Cost per tenant" not in page  # only operators compare tenants


async def test_status_page_shows_limits_and_controls_canaries(served: Served) -> None:
    """Operators see breakers, budgets and canaries, and roll a canary back from the page."""
    await served.runtime.canaries.start("console-echo", "2", baseline_version="1", share=0.5)
    client, csrf = await served.signed_in("operator")
    async with aclosing(client):
        page = (await client.get("/console/status")).text
        assert "Circuit breakers" in page
        assert "Budgets" in page
        assert "v1 → v2" in page
        assert "running" in page
        await client.post("/console/canaries/console-echo/rollback", data={"csrf": csrf})
        after = (await client.get("/console/status")).text
    assert "rolled back" in after
    assert await served.runtime.store.current_canary("console-echo") is None


async def test_only_an_operator_controls_canaries(served: Served) -> None:
    """A tenant's admin key sees no canary controls and cannot roll back a canary every tenant shares."""
    await served.runtime.canaries.start("console-echo", "2", baseline_version="1", share=0.5)
    client, csrf = await served.signed_in("acme-admin")
    async with aclosing(client):
        assert "Roll back" not in (await client.get("/console/status")).text
        refused = await client.post("/console/canaries/console-echo/rollback", data={"csrf": csrf})
        assert refused.status_code == 403
        assert "operator key" in refused.text
    canary = await served.runtime.store.current_canary("console-echo")
    assert canary is not None
    assert canary.status == "running"
