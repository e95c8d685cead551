"""Scraping a Serpens process's /metrics the way Prometheus does (prometheus_client's text
parser), over HTTPS with a certificate of the test CA, or plain HTTP on loopback."""
import ssl
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .etcd import identity, pki


def tls_context(who=None) -> ssl.SSLContext:
    """Trusts the test CA; presents `who`'s certificate (None: none)."""
    ctx = ssl.create_default_context(cafile=pki().cert_path)
    if who is not None:
        ctx.load_cert_chain(who.cert, who.key)
    return ctx


def scrape(url: str, who=None, timeout: float = 5) -> dict:
    """{family name: Metric} (counters named without _total, as the parser names them);
    https:// URLs present `who` (default a viewer's certificate)."""
    ctx = tls_context(who or identity("prometheus", "viewer")) if url.startswith("https") \
        else None
    with urllib.request.urlopen(url, context=ctx, timeout=timeout) as reply:
        text = reply.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(family, name: str | None = None) -> dict:
    """{frozenset(labels.items()): value} of the family's samples named `name` (default: the
    family's main sample: name_total for counters, the name itself for gauges)."""
    if name is None:
        name = family.name + ("_total" if family.type == "counter" else "")
    return {frozenset(s.labels.items()): s.value for s in family.samples if s.name == name}


def value(families: dict, name: str, **labels) -> float:
    """The one sample of family `name` with exactly `labels`."""
    return values(families[name])[frozenset(labels.items())]


def check_families(families: dict, declared: dict, required=()) -> None:
    """Every scraped serpens_ family is declared with its type and label names, and every
    `required` one (default: all declared) is there."""
    for name, fam in families.items():
        if not name.startswith("serpens_"):
            continue
        assert name in declared, f"{name}: exported but not declared"
        kind, labels = declared[name]
        assert fam.type == kind, (name, fam.type)
        for s in fam.samples:
            got = set(s.labels) - {"le"}
            assert got == set(labels), (name, s.labels, labels)
    missing = set(required or declared) - set(families)
    assert not missing, f"not exported: {sorted(missing)}"
