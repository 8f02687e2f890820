"""The tenant template sandbox: escapes refused, one-expression memory bombs refused, normal use works."""

from __future__ import annotations

import pytest

from functions.handlers.lib.document_sandbox import render_tenant_html
from shared.errors import PermanentJobError


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 1000000000 }}",
        "{{ [1, 2] * 1000000000 }}",
        "{{ 10 ** 64 ** 64 ** 64 }}",
        "{{ 2 ** 100000 }}",
        "{{ '%1000000000d' % 1 }}",
        "{{ '%1000000000d' | format(1) }}",
        "{{ '{:>1000000000}'.format(1) }}",
        "{{ '{x:>1000000000}'.format_map(data) }}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ 'x'.zfill(1000000000) }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ 'x' | indent(1000000000, true) }}",
        "{{ lipsum(1000000) }}",
        "{{ data.update({'a': 1}) }}",
        "{{ self.__init__.__globals__ }}",
        "{{ namespace.__init__.__globals__['os'] }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ range.__globals__ }}",
        "{{ (data | attr('__class__')).__base__.__subclasses__() }}",
    ],
)
def test_refused(source: str) -> None:
    with pytest.raises(PermanentJobError) as caught:
        render_tenant_html(source, {"x": 1})
    assert caught.value.kind == "template-error"


def test_everyday_templates_still_work() -> None:
    source = (
        "{{ '{:,}'.format(1234567) }}|{{ '%.2f' % 3.14159 }}|{{ 'ab' * 3 }}|{{ 2 ** 10 }}|"
        "{{ 'x' | center(5) }}|{{ data['items'] | length }}|{{ data.amount | money('GBP') }}|"
        "{{ data.when | date }}|{% for n in range(3) %}{{ n }}{% endfor %}|{{ data.name }}"
    )
    out = render_tenant_html(source, {"items": [1, 2], "amount": 12.5, "when": "2025-01-31", "name": "<b>"})
    assert out == "1,234,567|3.14|ababab|1024|  x  |2|£12.50|January 31, 2025|012|&lt;b&gt;"


def test_bad_filter_arguments_are_template_errors() -> None:
    for source in ("{{ 1 | money('XXX') }}", "{{ 'abc' | money }}", "{{ 'not a date' | date }}"):
        with pytest.raises(PermanentJobError) as caught:
            render_tenant_html(source, {})
        assert caught.value.kind == "template-error", source
