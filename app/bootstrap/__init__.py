"""Bootstrap: intents → rendered desired state → a reconcile loop that keeps the node there.

Modules, from pure to effectful::

    schema.py       profile documents (pydantic; errors name the field)
    variables.py    declared template variables: types, validation, built-ins
    render.py       profile rendering (declared names, templates dir) on app.runtime.templates' engine
    graph.py        dependency order
    instantiate.py  intent + profile + node facts → Instance (PKI requests, components)
    model.py        desired components, observations, actions (the lifecycle is drawn there)
    plan.py         the pure diff (decision table in its docstring)
    pki.py          CAs, SA key pair, leaves; never overwrites a key; renewal window
    kubeconfig.py   kubeconfigs with embedded client certificates
    health.py       HTTP/HTTPS(mTLS)/TCP/command checks
    driver.py       ComponentDriver protocol + HostProcessDriver
    reconcile.py    observe → plan → act; backoff, crash loops, drift, pruning
    store.py        intents and records in the database; the watched intent directory
    catalog.py      where profiles come from (built-ins in profiles/)
    service.py      BootstrapService: what the front doors and the daemon call
    metrics.py      Prometheus metrics the loop updates (passes, restarts, phases, cert expiry)
"""
