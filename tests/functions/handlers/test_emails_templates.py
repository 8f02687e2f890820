"""Bulk email templates (shared/email_templates.py): escaping, strictness and the sandbox's guards."""

from __future__ import annotations

import tracemalloc

import jinja2
import pytest

from shared.email_templates import (
    MAX_RENDERED_CHARS,
    TemplateFailed,
    check_template,
    has_expressions,
    render,
)


def test_html_is_autoescaped_and_text_is_not() -> None:
    data = {"name": "<b>Bob</b> & \"Co\" 'x'"}
    assert render("<p>{{ name }}</p>", data, "html") == "<p>&lt;b&gt;Bob&lt;/b&gt; &amp; &#34;Co&#34; &#39;x&#39;</p>"
    assert render("Hi {{ name }}", data, "text") == "Hi <b>Bob</b> & \"Co\" 'x'"


def test_url_expressions_are_percent_encoded() -> None:
    url = render("https://example.com/u/{{ token }}?l={{ list }}", {"token": "a/b c&d?", "list": 7}, "url")
    assert url == "https://example.com/u/a%2Fb%20c%26d%3F?l=7"


def test_ordinary_template_features_work() -> None:
    source = (
        "{% for item in items %}{{ loop.index }}. {{ item.name|upper }} {{ '%.2f'|format(item.price) }}\n"
        "{% endfor %}{% if vip is defined %}VIP{% else %}regular{% endif %} {{ '{:,}'.format(total) }}"
    )
    data = {"items": [{"name": "tea", "price": 2.5}, {"name": "cake", "price": 4}], "total": 1234567}
    assert render(source, data, "text") == "1. TEA 2.50\n2. CAKE 4.00\nregular 1,234,567"


def test_a_missing_variable_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(TemplateFailed, match="'name' is undefined"):
        render("Hello {{ name }}", {}, "text")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ ''|attr('__class__') }}",
        "{{ 'a{0.__class__}'.format('x') }}",
        "{{ items.append(1) }}",  # the immutable sandbox: no mutating the data
    ],
)
def test_sandbox_escapes_are_refused(source: str) -> None:
    with pytest.raises(TemplateFailed):
        render(source, {"items": []}, "text")


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 100000000 }}",
        "{{ ['x'] * 100000000 }}",
        "{{ 'x'|center(1000000000) }}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ 'x'.zfill(1000000000) }}",
        "{{ 'a\nb'|indent(1000000000) }}",
        "{{ '%1000000000d'|format(1) }}",
        "{{ '%*d' % (1000000000, 1) }}",
        "{{ '{:1000000000}'.format('x') }}",
        "{{ '{:{}}'.format('x', 1000000000) }}",
        "{{ (big ~ big)|replace('', big) }}",
        "{{ 2 ** 100000000 }}",
        "{{ ([big] * 100000)|join }}",
        "{{ ''.join([big] * 100000) }}",
        "{{ ('%(b)s' * 10000) % {'b': big} }}",
        "{{ ('{0}' * 10000).format(big) }}",
        "{{ ((big ~ '\n') * 50)|indent(100000) }}",
        "{{ ('a b c d e f g h ' * 100)|wordwrap(1, true, big) }}",
        "{{ ('\t' * 50000).expandtabs(100000) }}",
    ],
)
def test_single_operations_that_would_allocate_without_bound_are_refused(source: str) -> None:
    # Each would build (or try to build) a value of 100 MB to 1 GB in one C call.
    tracemalloc.start()
    try:
        with pytest.raises(TemplateFailed):
            render(source, {"big": "x" * 5000}, "text")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024


@pytest.mark.parametrize(
    "source",
    [
        # Doubling a string 40 times would need a terabyte; every path stops within a step or two.
        "{% set ns = namespace(s=big) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        "{% set ns = namespace(s=big) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
        "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}"
        "{{ d(big, 40) }}",
        "{% macro d(s, n) %}{% if n %}{{ d([s, s]|join, n - 1) }}{% endif %}{% endmacro %}{{ d(big, 40) }}",
        "{% macro d(s, n) %}{% if n %}{{ d('%s%s' % (s, s), n - 1) }}{% endif %}{% endmacro %}{{ d(big, 40) }}",
        "{% macro d(s, n) %}{% if n %}{{ d(s|tojson, n - 1) }}{% endif %}{% endmacro %}{{ d(quotes, 40) }}",
    ],
)
def test_values_cannot_grow_step_by_step_either(source: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(TemplateFailed):
            render(source, {"big": "x" * 5000, "quotes": '"\\' * 2000}, "text")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024


def test_lorem_ipsum_is_not_available() -> None:
    with pytest.raises(TemplateFailed, match="lipsum"):
        render("{{ lipsum(100000) }}", {}, "text")


def test_output_beyond_the_cap_stops_rendering() -> None:
    with pytest.raises(TemplateFailed, match="exceeds"):
        # A deadline no loaded CI box reaches first: this test is about the size cap alone.
        source = "{% for i in range(100000) %}{% for j in range(100) %}xxxxxxxxxx{% endfor %}{% endfor %}"
        render(source, {}, "text", deadline_seconds=120)
    assert len(render("{% for i in range(1000) %}x{% endfor %}", {}, "text")) == 1000 < MAX_RENDERED_CHARS


def test_a_loop_that_produces_nothing_stops_at_the_deadline() -> None:
    # 10^10 iterations: without the deadline this would run for hours (the test timeout fails it).
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateFailed, match="longer than"):
        render(source, {}, "text", deadline_seconds=0.2)


def test_compiling_never_evaluates_tenant_expressions() -> None:
    # With constant folding on, compiling this at the API would build 100 MB.
    tracemalloc.start()
    try:
        check_template("{{ 'x' * 100000000 }}{{ 'y'|center(100000000) }}", "text")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(TemplateFailed, match="line 2"):
        check_template("fine\n{% for x in %}", "html")


def test_templates_are_compiled_once_per_source() -> None:
    check_template("cached {{ x }}", "text")
    assert render("cached {{ x }}", {"x": 1}, "text") == "cached 1"
    assert render("cached {{ x }}", {"x": 2}, "text") == "cached 2"


def test_plain_urls_have_no_expressions() -> None:
    assert not has_expressions("https://example.com/u?x=1")
    assert has_expressions("https://example.com/u/{{ token }}")
    assert has_expressions("https://example.com/{% if a %}a{% endif %}")


def test_the_installed_jinja2_has_the_sandbox_fixes() -> None:
    # CVE-2024-56326, CVE-2024-56201 (3.1.5) and CVE-2025-27516 (3.1.6).
    major, minor, patch = (int(part) for part in jinja2.__version__.split(".")[:3])
    assert (major, minor, patch) >= (3, 1, 6)
