"""The reviewer console's HTML templates (Jinja2, autoescaped), kept in Python so they ship with the
package without package-data. Plain server-rendered forms; every POST form carries the session's
CSRF token."""

from __future__ import annotations

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{% block title %}Review{% endblock %} · fraud review</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
 table { border-collapse: collapse; margin: .5em 0 1.2em; }
 th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
 th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
 .flash { padding: .5em .8em; background: #e8f5e9; border: 1px solid #9c9; margin-bottom: 1em; }
 .error { padding: .5em .8em; background: #fdecea; border: 1px solid #d99; margin-bottom: 1em; }
 .kind-audit, .kind-post_auth { color: #555; font-style: italic; } tr.current { background: #fff8dc; }
 header { display: flex; gap: 1em; align-items: baseline; margin-bottom: 1em; } header form { margin: 0; }
</style></head><body>
<header><strong><a href="/queue">fraud review</a></strong>
{% if reviewer %}<span>signed in as <b id="whoami">{{ reviewer }}</b></span>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit">log out</button></form>{% endif %}</header>
{% if flash %}<div class="flash" id="flash">{{ flash }}</div>{% endif %}
{% if error %}<div class="error" id="error">{{ error }}</div>{% endif %}
{% block body %}{% endblock %}
</body></html>
"""

_LOGIN = """{% extends "base.html" %}{% block title %}Log in{% endblock %}{% block body %}
<h1>Log in</h1>
<form method="post" action="/login">
 <input type="hidden" name="csrf" value="{{ csrf }}">
 <p><label>Your name <input id="reviewer" name="reviewer" required maxlength="64" autocomplete="username"></label></p>
 <p><label>Token <input id="token" name="token" type="password" required autocomplete="current-password"></label></p>
 <p><button id="login" type="submit">Log in</button></p>
</form>{% endblock %}
"""

_QUEUE = """{% extends "base.html" %}{% block title %}Queue{% endblock %}{% block body %}
<h1>Queue</h1>
<p>{{ counts.open }} open ({{ counts.open_audit }} audit), {{ counts.labelled }} labelled, {{ counts.unsure }} unsure;
 {{ counts.labels_unpublished }} labels waiting to be published.
 Order: priority × (1 + age / SLA {{ sla }}); priority = score × amount (audit: 0.5 × amount).</p>
<table id="queue"><thead><tr><th>#</th><th>kind</th><th>transaction</th><th>score</th><th>amount</th><th>card</th>
<th>age</th><th>claimed by</th></tr></thead><tbody>
{% for case in cases %}{% set d = case.decision %}
<tr data-tx="{{ case.transaction_id }}" class="kind-{{ case.kind.value }}">
 <td class="num">{{ loop.index }}</td><td>{{ case.kind.value }}</td>
 <td><a href="/cases/{{ case.transaction_id | urlencode }}">{{ case.transaction_id }}</a></td>
 <td class="num">{{ score(d.score) }}</td><td class="num">{{ money(d.transaction) }}</td>
 <td>{{ d.transaction.card_id }}</td><td>{{ age(case) }}</td>
 <td>{{ case.claimed_by or "" }}{% if case.claimed_by == reviewer %} (you){% endif %}</td></tr>
{% else %}<tr><td colspan="8">The queue is empty.</td></tr>{% endfor %}
</tbody></table>{% endblock %}
"""

_CASE = """{% extends "base.html" %}{% block title %}{{ case.transaction_id }}{% endblock %}{% block body %}
{% set d = case.decision %}{% set t = d.transaction %}
<h1>Case {{ case.transaction_id }} <small class="kind-{{ case.kind.value }}">({{ case.kind.value }})</small></h1>
{% if case.kind.value == "audit" %}<p>An approved payment drawn at random (probability {{ case.sample_rate }}) so that
 review labels are not only about payments the model already suspected. Label it as carefully as a flagged one.</p>
{% endif %}{% if case.kind.value == "post_auth" %}<p>Approved without its features while the feature store was
 unavailable (fail-open, under the budget): the payment has gone through. Check it after the fact.</p>
{% endif %}
<table id="transaction">
<tr><th>status</th><td id="status">{{ case.status }}</td></tr>
<tr><th>decision</th><td>{{ d.outcome.value }} · score {{ score(d.score) }} · model {{ d.model_version }}
 {% if d.degraded_reason %}· degraded: {{ d.degraded_reason }}{% endif %}</td></tr>
<tr><th>amount</th><td>{{ money(t) }}</td></tr>
<tr><th>time</th><td>{{ when(t.event_time) }} (decided {{ when(d.decided_at) }})</td></tr>
<tr><th>card / customer</th><td>{{ t.card_id }} ({{ t.card_country }}) / {{ t.customer_id }}</td></tr>
<tr><th>merchant</th><td>{{ t.merchant_id }} · {{ t.merchant_category }} · {{ t.country }}</td></tr>
<tr><th>channel / device</th><td>{{ t.channel.value }} / {{ t.device_id }}</td></tr>
</table>

<h2>Rule reasons</h2>
<table id="rules"><tr><th>rule</th><th>asks for</th><th>reason</th></tr>
{% for h in d.rule_hits %}<tr><td>{{ h.rule_id }}</td><td>{{ h.action.value }}</td>
<td>{{ h.reason }}{% if not h.evaluated %} (not evaluated){% endif %}</td></tr>
{% else %}<tr><td colspan="3">No rule fired.</td></tr>{% endfor %}</table>

<h2>Model reason codes</h2>
<table id="reasons"><tr><th>feature</th><th>value</th><th>push (log-odds)</th><th>reason</th></tr>
{% for r in d.reasons %}<tr><td>{{ r.feature }}</td><td class="num">{{ "%.4g" | format(r.value) }}</td>
<td class="num">{{ "%+.3f" | format(r.contribution) }}</td><td>{{ r.text }}</td></tr>
{% else %}<tr><td colspan="4">None recorded for this decision.</td></tr>{% endfor %}</table>

<h2>The card's recent payments</h2>
<table id="history"><tr><th>time</th><th>transaction</th><th>amount</th><th>merchant</th><th>country</th>
<th>outcome</th><th>score</th></tr>
{% for p in history %}<tr class="{{ 'current' if p.transaction_id == case.transaction_id else '' }}">
<td>{{ when(p.event_time) }}</td><td>{{ p.transaction_id }}</td>
<td class="num">{{ "{:,.2f}".format(p.amount_minor / 100) }} {{ p.currency }}</td><td>{{ p.merchant_id }}</td>
<td>{{ p.country }}</td><td>{{ p.outcome.value }}</td><td class="num">{{ score(p.score) }}</td></tr>
{% else %}<tr><td colspan="7">No payments on this card in the intake's history window.</td></tr>{% endfor %}
</table>

<h2>Verdict</h2>
{% if case.status != "open" %}
<p id="verdict">{{ case.verdict.value if case.verdict else case.status }} by {{ case.reviewed_by or "?" }}
 at {{ when(case.reviewed_at) }}{% if case.review_note %}: “{{ case.review_note }}”{% endif %}</p>
{% elif case.claimed_by == reviewer %}
<p>Claimed by you until {{ when(case.claim_expires_at) }}.</p>
<form method="post" action="/cases/{{ case.transaction_id | urlencode }}/label">
 <input type="hidden" name="csrf" value="{{ csrf }}">
 <p><label><input type="radio" id="verdict-fraud" name="verdict" value="fraud" required> fraud</label>
 <label><input type="radio" id="verdict-legitimate" name="verdict" value="legitimate"> legitimate</label>
 <label><input type="radio" id="verdict-unsure" name="verdict" value="unsure"> unsure (no training label)</label></p>
 <p><label>Note<br><textarea id="note" name="note" rows="3" cols="60" maxlength="2000"></textarea></label></p>
 <p><button id="save" type="submit">Save verdict</button></p>
</form>
<form method="post" action="/cases/{{ case.transaction_id | urlencode }}/release">
 <input type="hidden" name="csrf" value="{{ csrf }}"><button id="release" type="submit">Release to the queue</button>
</form>
{% elif case.claimed_by %}
<p id="claimed">Claimed by {{ case.claimed_by }} until {{ when(case.claim_expires_at) }}.</p>
{% else %}
<form method="post" action="/cases/{{ case.transaction_id | urlencode }}/claim">
 <input type="hidden" name="csrf" value="{{ csrf }}"><button id="claim" type="submit">Claim this case</button>
</form>
{% endif %}{% endblock %}
"""

TEMPLATES = {"base.html": _BASE, "login.html": _LOGIN, "queue.html": _QUEUE, "case.html": _CASE}
