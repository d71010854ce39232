"""The sandbox blocks escapes and bounds every resource a template or condition can use."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from jinja2 import DictLoader

from crm_notify.errors import RenderError, SandboxLimitError, TemplateNotFoundError
from crm_notify.render import BoundedSandboxEnvironment, SandboxLimits, ensure_plain_data

#: Every attack must be stopped well within this many seconds.
DEADLINE_S = 3.0


def run_bounded(action: Callable[[], Any], seconds: float = DEADLINE_S) -> Any:
    """Run ``action`` in a daemon thread; fail if it outlives ``seconds``, else return/raise."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = action()
        except BaseException as exc:  # handed back to the test thread
            outcome["error"] = exc

    start = time.monotonic()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    assert time.monotonic() - start < seconds
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def env() -> BoundedSandboxEnvironment:
    return BoundedSandboxEnvironment()


def render(env: BoundedSandboxEnvironment, source: str, **context: Any) -> str:
    return env.from_string(source).render(context)


def test_ordinary_templates_still_work(env: BoundedSandboxEnvironment) -> None:
    # Given a template using loops, macros, formatting, filters, slices and concatenation
    source = (
        "{% macro item(i) %}[{{ i.name|upper }} {{ '%.2f' % i.price }}]{% endmacro %}"
        "{% for i in items %}{{ item(i) }}{% endfor %}|{{ '{:>5}'.format(n) }}"
        "|{{ names|join(', ') }}|{{ 'ab' * 2 }}|{{ 'x'|center(5) }}|{{ word[1:3] ~ '!' }}"
        "|{{ 2 ** 10 }}|{{ total * 2 }}|{% for x in tree recursive %}{{ x.n }}"
        "{{ loop(x.kids) }}{% endfor %}"
    )
    context = {
        "items": [{"name": "tea", "price": 3.5}],
        "n": 7,
        "names": ["a", "b"],
        "word": "hello",
        "total": Decimal("1.25"),
        "tree": [{"n": 1, "kids": [{"n": 2, "kids": []}]}],
    }

    # When it is rendered
    out = render(env, source, **context)

    # Then the output is what plain Jinja would produce
    assert out == "[TEA 3.50]|    7|a, b|abab|  x  |el!|1024|2.50|12"


RESOURCE_ATTACKS = [
    "{{ 9**(9**9) }}",
    "{{ 'a' * 999999999 }}",
    "{{ 'a' * 10**10 }}",
    "{{ [1] * 10**9 }}",
    "{{ (2**99999) * (2**99999) }}",
    "{{ '%999999999d' % 1 }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '%(a(b)c)999999999d' % {'a(b)c': 1} }}",
    "{{ ('%s' * 20000) % (('a' * 100000,) * 20000) }}",
    "{{ 'x'.center(10**9) }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ 'x'.rjust(10**9) }}",
    "{{ 'x'.zfill(10**9) }}",
    "{{ ('\t' * 100000).expandtabs(100000) }}",
    "{{ ('a' * 100000).replace('a', 'b' * 100000) }}",
    "{{ ('b' * 100000).join('a' * 100000) }}",
    "{{ ('a' * 100000).translate({97: 'b' * 100000}) }}",
    "{{ (1).to_bytes(10**9, 'big') }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:{}}'.format(1, 999999999) }}",
    "{{ ('{0}' * 20000).format('a' * 100000) }}",
    "{{ 'x'|center(10**9) }}",
    "{{ 'x'|indent(10**9) }}",
    "{{ ('\n' * 100000)|indent('x' * 100000) }}",
    "{{ 'x'|wordwrap(10**9) }}",
    "{{ 'x'|truncate(10**9) }}",
    "{{ '%999999999s'|format(1) }}",
    "{{ ('a' * 100000)|replace('a', 'b' * 100000) }}",
    "{{ (['a' * 100000] * 100000)|join }}",
    "{{ [1]|batch(10**9, 'x')|list }}",
    "{{ [1]|slice(10**9)|list }}",
    "{{ 1.5|round(10**9, 'ceil') }}",
    "{{ range(1000)|list|tojson(indent=100000) }}",
    "{{ lipsum(10**9) }}",
    "{{ range(100000)|map('center', 100000)|list|length }}",
    "{{ day.strftime('%c' * 50000) }}",
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "{% for a in range(100000) %}{% for b in range(100000) if false %}{% endfor %}{% endfor %}",
    "{% for a in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}{% endmacro %}"
    "{{ m()|length }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}",
    "{% set s = 'a' * 100000 %}{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
    "{% set ns.l = ns.l + [s[1:]] %}{% endfor %}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% macro f(n) %}{% if n %}{% set a = f(n - 1) %}{% set b = f(n - 1) %}{% endif %}"
    "{% endmacro %}{{ f(60) }}",
    "{% for x in items recursive %}{{ loop(items) }}{% endfor %}",
]


@pytest.mark.parametrize("source", RESOURCE_ATTACKS)
def test_resource_attack_is_stopped_quickly(env: BoundedSandboxEnvironment, source: str) -> None:
    # Given a template that would exhaust time or memory without bounds
    context = {"items": [1, 2], "day": date(2024, 1, 2)}

    # When it is compiled and rendered
    # Then a SandboxLimitError stops it within the deadline
    with pytest.raises(SandboxLimitError):
        run_bounded(lambda: render(env, source, **context))


@pytest.mark.parametrize(
    "source",
    ["{{ 9**(9**9) }}", "{{ 'a' * 999999999 }}", "{{ 'x'|center(999999999) }}"],
)
def test_huge_constants_are_not_folded_at_compile_time(
    env: BoundedSandboxEnvironment, source: str
) -> None:
    # Given an expression of constants whose value is astronomically large
    # When it is only compiled
    template = run_bounded(lambda: env.from_string(source))

    # Then compiling returned at once and the bound applies at render time
    with pytest.raises(SandboxLimitError):
        run_bounded(lambda: template.render())


def test_power_tower_uses_jinja_left_associativity(env: BoundedSandboxEnvironment) -> None:
    # Given 9**9**9, which Jinja parses as (9**9)**9 (78 digits)
    # When it is rendered
    out = run_bounded(lambda: render(env, "{{ 9**9**9 }}"))

    # Then it is computed, bounded but not refused
    assert out == str((9**9) ** 9)


def test_range_is_capped(env: BoundedSandboxEnvironment) -> None:
    # Given a range longer than the sandbox's MAX_RANGE
    # When it is rendered
    # Then a RenderError explains the cap
    with pytest.raises(RenderError, match="Range too big"):
        run_bounded(lambda: render(env, "{{ range(10**9)|list }}"))


def test_loop_limit_counts_all_loops_exactly() -> None:
    # Given a budget of 10 loop items
    env = BoundedSandboxEnvironment(SandboxLimits(max_loop_iterations=10))
    two_loops = "{% for i in range(5) %}{% endfor %}{% for i in range(5) %}{{ i }}{% endfor %}"

    # When two loops use exactly 10 items, and then one more item is used
    out = render(env, two_loops)

    # Then the first render passes and the second is refused
    assert out == "01234"
    with pytest.raises(SandboxLimitError, match="10 iterations"):
        render(env, two_loops + "{% for i in [1] %}{% endfor %}")


def test_deadline_stops_a_slow_render() -> None:
    # Given a 0.2 s budget and an exponential macro that creates nothing
    env = BoundedSandboxEnvironment(SandboxLimits(max_seconds=0.2))
    source = "{% macro f(n) %}{% if n %}{% set a = f(n - 1) %}{% set b = f(n - 1) %}{% endif %}"
    source += "{% endmacro %}{{ f(60) }}"

    # When it is rendered
    start = time.monotonic()
    with pytest.raises(SandboxLimitError, match="longer than"):
        run_bounded(lambda: render(env, source))

    # Then it stopped shortly after the deadline
    assert time.monotonic() - start < 1.5


def test_output_limit_is_exact() -> None:
    # Given a 40-character output budget
    env = BoundedSandboxEnvironment(SandboxLimits(max_output_chars=40))

    # When 40 and then 41 characters are rendered
    out = render(env, "{{ 'x' * 40 }}")

    # Then 40 pass and 41 are refused
    assert out == "x" * 40
    with pytest.raises(SandboxLimitError, match="output exceeds"):
        render(env, "{{ 'x' * 41 }}")


def test_source_limit_applies_to_templates_and_expressions() -> None:
    # Given a 10-character source limit
    env = BoundedSandboxEnvironment(SandboxLimits(max_source_chars=10))

    # When an 11-character template or expression is compiled
    # Then both are refused
    with pytest.raises(SandboxLimitError, match="source is 11 characters"):
        env.from_string("x" * 11)
    with pytest.raises(SandboxLimitError, match="source is 11 characters"):
        env.compile_expression("1 + 1 + 100")


def test_recursive_macro_ends_with_limit_error(env: BoundedSandboxEnvironment) -> None:
    # Given a macro that calls itself forever
    source = "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"

    # When it is rendered
    # Then the recursion is reported as a sandbox limit
    with pytest.raises(SandboxLimitError, match="recursion too deep"):
        run_bounded(lambda: render(env, source))


def test_recursive_include_ends_with_limit_error() -> None:
    # Given a template that includes itself twice
    loader = DictLoader({"self.txt": "{% include 'self.txt' %}{% include 'self.txt' %}"})
    env = BoundedSandboxEnvironment(loader=loader)

    # When it is rendered
    # Then the recursion is reported as a sandbox limit naming the template
    with pytest.raises(SandboxLimitError, match=r"self\.txt:1: recursion"):
        run_bounded(lambda: env.render("self.txt", {}))


def test_budgets_are_per_render_and_per_thread() -> None:
    # Given a limit of 100 loop items and four threads rendering 60 items each at once
    env = BoundedSandboxEnvironment(SandboxLimits(max_loop_iterations=100))
    template = env.from_string("{% for i in range(60) %}{{ i }}{% endfor %}")
    barrier = threading.Barrier(4)
    results: list[str] = []

    def work() -> None:
        barrier.wait()
        results.append(template.render())

    # When they run concurrently
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)

    # Then none was charged for the others' iterations
    assert len(results) == 4


@pytest.mark.parametrize(
    ("source", "attribute"),
    [
        ("{{ ''.__class__.__mro__ }}", "__class__"),
        ("{{ cycler.__init__.__globals__ }}", "__init__"),
        ("{{ x.append(1) }}", "append"),
        ("{{ '{0.__class__}'.format(1) }}", "__class__"),
        ("{{ (1).__class__.__subclasses__() }}", "__class__"),
    ],
)
def test_sandbox_escapes_are_blocked(
    env: BoundedSandboxEnvironment, source: str, attribute: str
) -> None:
    # Given a context list and a template reaching for internals or mutation
    data = [1, 2]

    # When it is rendered
    with pytest.raises(RenderError, match="blocked by the sandbox") as info:
        render(env, source, x=data)

    # Then the sandbox refused the attribute and nothing was changed
    assert repr(attribute) in str(info.value)
    assert data == [1, 2]


def test_undefined_variable_is_an_error_naming_it(env: BoundedSandboxEnvironment) -> None:
    # Given a template using an undefined variable on line 2
    source = "Hello\n{{ customer.name }}"

    # When it is rendered
    with pytest.raises(RenderError) as info:
        render(env, source)

    # Then the error names the variable and the line, chained to Jinja's error
    assert "<string>:2: 'customer' is undefined" in str(info.value)
    assert info.value.__cause__ is not None


def test_syntax_error_names_template_and_line() -> None:
    # Given a template with a broken tag on line 3
    env = BoundedSandboxEnvironment(loader=DictLoader({"t.txt": "a\nb\n{% for %}"}))

    # When it is rendered
    # Then a RenderError (not Jinja's) names the file and line
    with pytest.raises(RenderError, match=r"^t\.txt:3: syntax error: "):
        env.render("t.txt", {})


def test_python_errors_are_translated(env: BoundedSandboxEnvironment) -> None:
    # Given a template dividing by zero
    # When it is rendered
    # Then the ZeroDivisionError becomes a RenderError with its type in the message
    with pytest.raises(RenderError, match="<string>:1: ZeroDivisionError") as info:
        render(env, "{{ 1 // 0 }}")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_missing_template_is_template_not_found() -> None:
    # Given an environment without the template
    env = BoundedSandboxEnvironment(loader=DictLoader({}))

    # When it is rendered
    # Then a TemplateNotFoundError names it
    with pytest.raises(TemplateNotFoundError, match=r"'nope\.html'"):
        env.render("nope.html", {})


def test_autoescape_is_on_for_html_only() -> None:
    # Given the same template saved as HTML and as text
    loader = DictLoader({"a.html": "{{ v }}", "a.txt": "{{ v }}"})
    env = BoundedSandboxEnvironment(loader=loader)

    # When both are rendered with markup in the data
    html = env.render("a.html", {"v": "<b>&"})
    text = env.render("a.txt", {"v": "<b>&"})

    # Then only the HTML one escapes it (strings and expressions are not escaped)
    assert html == "&lt;b&gt;&amp;"
    assert text == "<b>&"
    assert env.from_string("{{ v }}").render(v="<b>") == "<b>"


def test_generate_outside_a_bounded_render_fails_closed(env: BoundedSandboxEnvironment) -> None:
    # Given a compiled template
    template = env.from_string("{% for i in range(3) %}{{ i }}{% endfor %}")

    # When it is rendered through Jinja's generate(), which bypasses the budget
    # Then it refuses to run
    with pytest.raises(RenderError, match="outside a bounded render"):
        list(template.generate())


def test_condition_evaluates_with_plain_data(env: BoundedSandboxEnvironment) -> None:
    # Given a rule condition
    condition = env.compile_expression('order.total > 50 and contact.country == "PL"')

    # When it is evaluated against matching and non-matching data
    matching = {"order": {"total": Decimal("60.5")}, "contact": {"country": "PL"}}
    other = {"order": {"total": 10}, "contact": {"country": "PL"}}

    # Then it returns the booleans
    assert condition.evaluate(matching) is True
    assert condition.evaluate(other) is False


def test_condition_errors_are_render_errors(env: BoundedSandboxEnvironment) -> None:
    # Given a condition with a typo, one with a syntax error, and one that explodes
    typo = env.compile_expression("order.totl > 50")

    # When they are compiled or evaluated
    # Then each raises the matching error
    with pytest.raises(RenderError, match="no attribute 'totl'"):
        typo.evaluate({"order": {"total": 1}})
    with pytest.raises(RenderError, match="syntax error"):
        env.compile_expression("order.total >")
    with pytest.raises(RenderError, match="syntax error"):
        env.compile_expression("1 2")
    with pytest.raises(SandboxLimitError):
        run_bounded(lambda: env.compile_expression("'a' * 10**10").evaluate({}))


def test_condition_result_must_be_plain_data(env: BoundedSandboxEnvironment) -> None:
    # Given a condition that forgot to call a method
    condition = env.compile_expression("name.upper")

    # When it is evaluated
    # Then the method object does not leak out of the sandbox
    with pytest.raises(RenderError, match="not plain data"):
        condition.evaluate({"name": "x"})


def test_condition_undefined_result(env: BoundedSandboxEnvironment) -> None:
    # Given a condition that is just a missing key, strict and lenient
    strict = env.compile_expression("contact.missing")
    lenient = env.compile_expression("contact.missing", undefined_to_none=True)

    # When both are evaluated
    # Then the strict one raises naming the key and the lenient one returns None
    with pytest.raises(RenderError, match="missing"):
        strict.evaluate({"contact": {}})
    assert lenient.evaluate({"contact": {}}) is None


class Order:
    """Stands in for an ORM object."""

    total = 5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"order": Order()}, r"context\['order'\]: .*Order is not plain data"),
        ({"items": [1, {2: "x"}]}, r"context\['items'\]\[1\]: key 2 is not a str"),
        ({"n": Decimal("1e999999999")}, "exponent"),
        ({"n": 2**200_000}, "bits"),
        ({"s": {1, 2}}, "set is not plain data"),
    ],
)
def test_ensure_plain_data_rejects(value: Any, message: str) -> None:
    # Given data that is not plain
    # When it is checked
    # Then a RenderError names the offending path
    with pytest.raises(RenderError, match=message):
        ensure_plain_data(value)


def test_ensure_plain_data_rejects_cycles() -> None:
    # Given a list that contains itself
    items: list[Any] = [1]
    items.append(items)

    # When it is checked
    # Then the cycle is refused
    with pytest.raises(RenderError, match="contains itself"):
        ensure_plain_data({"items": items})


def test_ensure_plain_data_accepts_plain_values() -> None:
    # Given every kind of plain value, nested and shared
    shared = {"a": 1}
    value = {
        "s": "x",
        "i": 1,
        "f": 1.5,
        "b": True,
        "none": None,
        "when": datetime(2024, 1, 1, tzinfo=UTC),
        "day": date(2024, 1, 1),
        "price": Decimal("9.99"),
        "list": [shared, shared, ("t", 1)],
    }

    # When it is checked
    # Then nothing is raised
    ensure_plain_data(value)


def test_render_rejects_objects_in_context(env: BoundedSandboxEnvironment) -> None:
    # Given an ORM-like object in the context
    # When a template is rendered with it
    # Then it is refused before rendering
    with pytest.raises(RenderError, match="not plain data"):
        render(env, "{{ order.total }}", order=Order())
