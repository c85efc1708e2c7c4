"""Settings from tether.toml and TETHER_* variables, and the runtime they wire (gateway, Redis)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.config import load_settings, open_runtime
from tether.errors import ConfigurationError
from tether.resilience.breaker import BreakerState
from tether.types import Usage

TOML = """
[tether]
db = "sqlite:///{db}"
model = "support"

[tether.routes]
support = ["openai:primary-model", "openai:backup-model"]

[tether.models."openai:primary-model"]
timeout_s = 3
context_window_tokens = 8000

[tether.prices."openai:primary-model"]
input_per_mtok = 1.5
output_per_mtok = 6

[tether.retry]
max_attempts = 2

[tether.breaker]
failure_threshold = 2
cooldown_s = 120

[[tether.rules]]
tag = "simple"
route = "support"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tether.toml"
    path.write_text(text.format(db=tmp_path / "t.db"))
    return path


def test_toml_sections_are_read(tmp_path: Path) -> None:
    """Routes, per-model limits, prices, retry and breaker settings come from the file."""
    settings = load_settings(write(tmp_path, TOML), environ={})
    assert settings.routes == {"support": ["openai:primary-model", "openai:backup-model"]}
    assert settings.models["openai:primary-model"].timeout_s == 3
    assert settings.prices["openai:primary-model"].output_per_mtok == 6
    assert settings.retry.max_attempts == 2
    assert settings.breaker.failure_threshold == 2
    assert settings.rules[0].route == "support"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """TETHER_DB and TETHER_REDIS win over the file; explicit overrides win over both."""
    path = write(tmp_path, TOML)
    settings = load_settings(path, environ={"TETHER_DB": "sqlite:///env.db", "TETHER_REDIS": "redis://x:1/0"})
    assert settings.db == "sqlite:///env.db"
    assert settings.redis == "redis://x:1/0"
    assert load_settings(path, environ={"TETHER_DB": "sqlite:///env.db"}, db="sqlite:///flag.db").db == (
        "sqlite:///flag.db"
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[tether]\nlease_s = -1\n", "lease_s"),
        ("[tether]\nunknown_key = 1\n", "unknown_key"),
        ('[tether.models."openai:x"]\ntimeout_s = 0\n', "models.openai:x.timeout_s"),
        ('[tether.prices."openai:x"]\ninput_per_mtok = 1\n', "output_per_mtok"),
        ("[tether.retry]\nmax_attempts = 0\n", "retry.max_attempts"),
        ("[tether\n", "not valid TOML"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    """An invalid file fails at start with the exact key and the reason."""
    path = tmp_path / "tether.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(path, environ={})
    assert needle in str(caught.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    """An explicit --config that does not exist is an error naming the path."""
    with pytest.raises(ConfigurationError, match=r"nope\.toml"):
        load_settings(tmp_path / "nope.toml", environ={})


async def test_open_runtime_builds_the_configured_gateway(tmp_path: Path) -> None:
    """The runtime's gateway serves the configured route with its prices and breaker policy."""
    settings = load_settings(write(tmp_path, TOML), environ={})
    async with open_runtime(settings) as runtime:
        assert runtime.gateway.routes() == ["support"]
        assert runtime.gateway.prices.cost_usd("openai:primary-model", Usage(1_000_000, 0)) == pytest.approx(
            1.5
        )
        assert runtime.gateway.breakers.get("model:x").policy.failure_threshold == 2


async def test_redis_shares_breaker_state_between_runtimes(tmp_path: Path, redis_url: str) -> None:
    """With TETHER_REDIS set, a breaker opened by one runtime is open for another (separate clients)."""
    settings = load_settings(write(tmp_path, TOML), environ={"TETHER_REDIS": redis_url})
    name = f"model:shared-{tmp_path.name}"
    async with open_runtime(settings) as first, open_runtime(settings) as second:
        breaker_one = first.gateway.breakers.get(name)
        breaker_two = second.gateway.breakers.get(name)
        await breaker_one.reset()
        for _ in range(2):
            await breaker_one.allow()
            await breaker_one.record_failure()
        assert await breaker_two.state() == BreakerState.OPEN
        await breaker_two.reset()
        assert await breaker_one.state() == BreakerState.CLOSED


@pytest.mark.parametrize(("mode", "exact", "semantic"), [("off", False, False), ("exact", True, False)])
async def test_cache_mode_builds_the_layers(tmp_path: Path, mode: str, exact: bool, semantic: bool) -> None:
    """[tether.cache] mode picks the gateway's cache layers (exact by default; off disables it)."""
    path = tmp_path / "tether.toml"
    path.write_text(f'[tether]\ndb = "sqlite:///{tmp_path / "t.db"}"\n[tether.cache]\nmode = "{mode}"\n')
    async with open_runtime(load_settings(path, environ={})) as runtime:
        cache = runtime.gateway.cache
        assert (cache is not None and cache.exact is not None) == exact
        assert (cache is not None and cache.semantic is not None) == semantic


def test_unknown_cache_mode_is_named(tmp_path: Path) -> None:
    """A cache mode that does not exist fails with the key and the allowed values."""
    path = tmp_path / "tether.toml"
    path.write_text('[tether.cache]\nmode = "fuzzy"\n')
    with pytest.raises(ConfigurationError, match=r"cache\.mode") as caught:
        load_settings(path, environ={})
    assert "semantic" in str(caught.value)


async def test_unreachable_redis_degrades_to_process_memory(tmp_path: Path) -> None:
    """With Redis down, runs still complete and breakers still work, in this process's memory."""
    from tether import Agent, ScriptedModel

    settings = load_settings(write(tmp_path, TOML), environ={"TETHER_REDIS": "redis://127.0.0.1:1/0"})
    agent = Agent("faq", model=ScriptedModel([{"content": "hello"}]))
    async with open_runtime(settings, agents=[agent]) as runtime:
        run = await runtime.run(agent, "hi")
        assert run.output == "hello"
        breaker = runtime.gateway.breakers.get("model:degraded")
        for _ in range(2):
            await breaker.allow()
            await breaker.record_failure()
        assert await breaker.state() == BreakerState.OPEN


async def test_budget_settings_override_the_default_limits(tmp_path: Path) -> None:
    """[tether.budget.per_run] replaces only the counters it names; the runtime enforces the result."""
    path = tmp_path / "tether.toml"
    path.write_text(
        f'[tether]\ndb = "sqlite:///{tmp_path / "t.db"}"\n'
        "[tether.budget.per_run]\ntool_calls = 3\ncustom = { emails = 2 }\n"
        "[tether.budget]\nspend_rate_usd_per_hour = 1.5\n"
    )
    settings = load_settings(path, environ={})
    async with open_runtime(settings) as runtime:
        policy = runtime.budget_policy
    assert policy.per_run.tool_calls == 3
    assert policy.per_run.custom["emails"] == 2
    assert policy.per_run.tokens == 8000  # not named: DESIGN.md's default stays
    assert policy.spend_rate_usd_per_hour == 1.5


def test_bad_budget_setting_is_named(tmp_path: Path) -> None:
    """A non-positive budget limit fails at start naming its key."""
    path = tmp_path / "tether.toml"
    path.write_text("[tether.budget.per_run]\ntokens = -5\n")
    with pytest.raises(ConfigurationError, match=r"budget\.per_run\.tokens"):
        load_settings(path, environ={})


async def test_tracing_logs_and_shadows_are_wired_from_settings(tmp_path: Path) -> None:
    """Tracing, logs and shadows settings give the runtime a tracer, a logger and a shadow candidate."""
    from tether.observe.logs import RunLogger
    from tether.observe.tracing import RunTracer

    (tmp_path / "shadow_agents.py").write_text(
        "from tether import Agent\ncandidate = Agent('desk', version='2', model='scripted:none.json')\n"
    )
    path = tmp_path / "tether.toml"
    path.write_text(
        f'[tether]\ndb = "sqlite:///{tmp_path / "t.db"}"\n'
        '[tether.tracing]\nexporter = "console"\nrecord_content = true\n'
        '[tether.logs]\nformat = "json"\n'
        '[tether.shadows]\ndesk = "shadow_agents:candidate"\n'
    )
    settings = load_settings(path, environ={})
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        async with open_runtime(settings) as runtime:
            kinds = [type(observer) for observer in runtime.observers]
            tracer = runtime.observers[0]
            assert runtime.shadows["desk"].version == "2"
    finally:
        sys.path.remove(str(tmp_path))
    assert kinds == [RunTracer, RunLogger]
    assert isinstance(tracer, RunTracer)
    assert tracer.record_content is True


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[tether.tracing]\nexporter = "jaeger"\n', r"tracing\.exporter"),
        ('[tether.logs]\nformat = "xml"\n', r"logs\.format"),
        ("[tether.metrics]\nport = 70000\n", r"metrics\.port"),
    ],
)
def test_bad_observability_settings_are_named(tmp_path: Path, text: str, needle: str) -> None:
    """An unknown exporter, log format or an impossible port fails at start naming its key."""
    path = tmp_path / "tether.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=needle):
        load_settings(path, environ={})


async def test_security_settings_are_wired(tmp_path: Path) -> None:
    """Permissions file, guardrail actions and answer redaction per tenant reach the runtime."""
    policy = tmp_path / "permissions.toml"
    policy.write_text('[[grants]]\nname = "read"\nroles = ["support"]\ntools = ["lookup_*"]\n')
    path = tmp_path / "tether.toml"
    path.write_text(
        f'[tether]\ndb = "sqlite:///{tmp_path / "t.db"}"\n'
        f'[tether.permissions]\nfile = "{policy}"\n'
        '[tether.guardrails]\non_user_injection = "block"\nabuse_threshold = 5\nbehaviour = true\n'
        '[[tether.guardrails.deny_calls]]\ntool = "run_shell"\nargument = "command"\npattern = "rm -rf"\n'
        "[tether.redaction]\nanswers = true\ntenants = { internal = [] }\n"
    )
    settings = load_settings(path, environ={})
    async with open_runtime(settings) as runtime:
        assert runtime.permissions is not None
        assert [g.name for g in runtime.permissions.grants] == ["read"]
        assert runtime.guardrails is not None
        assert runtime.guardrails.abuse_threshold == 5
        assert runtime.baselines is not None
        assert runtime.baselines.monitor.min_runs == 20
        assert runtime.guardrails.refused("run_shell", {"command": "rm -rf /"}) is not None
        assert runtime.redaction is not None
        assert runtime.redaction.for_tenant("acme").redact("mail jo@example.com") == "mail [email]"
        assert runtime.redaction.for_tenant("internal").redact("mail jo@example.com") == "mail jo@example.com"


def test_unknown_redaction_kind_is_named(tmp_path: Path) -> None:
    """A redaction kind that does not exist fails at start, listing the known ones."""
    path = tmp_path / "tether.toml"
    path.write_text('[tether.redaction]\nanswers = true\nkinds = ["shoe_size"]\n')
    settings = load_settings(path, environ={})
    with pytest.raises(ConfigurationError, match="unknown redaction kinds"):
        settings.redaction.build()
