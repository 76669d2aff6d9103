"""The collector's template cache: bounded, least recently used out first.

Templates arrive from the network, so anyone who can reach the collector can
announce them: up to 65,280 template ids per observation domain, under any
number of domains and (over UDP) any spoofed source. The cache therefore has
three bounds, each with an eviction counter:

  max_per_domain   templates per (protocol, exporter, domain): the domain's
                   least recently used template goes (`templates_evicted_domain`);
  max_templates    templates in total: the cache's least recently used
                   template goes (`templates_evicted_total`);
  max_fields       template fields in total (a template's memory grows with
                   its fields; one 64 KB message can hold a 16,000-field
                   template): least recently used out until it fits
                   (`templates_evicted_total`).

"Used" means learned, refreshed or used to decode a data set, so templates
that exporters keep refreshing or using stay; a flood of new ones pushes out
only what nobody used since. An evicted template is simply unknown again:
its data sets are counted as `data_sets_unknown_template` until the exporter
resends it (UDP exporters resend periodically, TCP ones on reconnect).

Keys are (protocol, exporter, domain, template id); a domain key is the
first three.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

DEFAULT_MAX_TEMPLATES = 16384
DEFAULT_MAX_PER_DOMAIN = 1024
DEFAULT_MAX_FIELDS = 262144


class TemplateCache:
    """Received templates by (protocol, exporter, domain, id), bounded."""

    def __init__(self, counters: Counter, max_templates: int = DEFAULT_MAX_TEMPLATES,
                 max_per_domain: int = DEFAULT_MAX_PER_DOMAIN,
                 max_fields: int = DEFAULT_MAX_FIELDS):
        for name, value in (("max_templates", max_templates),
                            ("max_per_domain", max_per_domain), ("max_fields", max_fields)):
            if value < 1:
                raise ValueError("template cache %s must be >= 1, not %d" % (name, value))
        self.counters = counters
        self.max_templates = max_templates
        self.max_per_domain = max_per_domain
        self.max_fields = max_fields
        self._lru: OrderedDict = OrderedDict()     # key -> template, oldest first
        self._domains: dict[tuple, OrderedDict] = {}  # domain key -> {tid: template}
        self.fields = 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key) -> bool:
        return key in self._lru

    def get(self, key):
        """The template under key (now the most recently used), or None."""
        tmpl = self._lru.get(key)
        if tmpl is not None:
            self._lru.move_to_end(key)
            self._domains[key[:3]].move_to_end(key[3])
        return tmpl

    def store(self, key, tmpl) -> bool:
        """Learn or refresh a template; True when it was new. Evicts what
        the bounds require (a template wider than max_fields is refused:
        counted as `templates_too_wide`, never stored)."""
        if len(tmpl.fields) > self.max_fields:
            self.counters["templates_too_wide"] += 1
            return False
        new = self.pop(key) is None
        self._lru[key] = tmpl
        self._domains.setdefault(key[:3], OrderedDict())[key[3]] = tmpl
        self.fields += len(tmpl.fields)
        domain = self._domains[key[:3]]
        while len(domain) > self.max_per_domain:
            self.pop(key[:3] + (next(iter(domain)),))
            self.counters["templates_evicted_domain"] += 1
        while len(self._lru) > self.max_templates or self.fields > self.max_fields:
            self.pop(next(iter(self._lru)))
            self.counters["templates_evicted_total"] += 1
        return new

    def pop(self, key):
        """Remove and return the template under key (None if absent)."""
        tmpl = self._lru.pop(key, None)
        if tmpl is not None:
            self.fields -= len(tmpl.fields)
            domain = self._domains[key[:3]]
            del domain[key[3]]
            if not domain:
                del self._domains[key[:3]]
        return tmpl

    def domain_keys(self, domain_key) -> list[tuple]:
        """Every key of one (protocol, exporter, domain)."""
        return [domain_key + (tid,) for tid in self._domains.get(domain_key, ())]
