"""The dispatcher role: ``qlara.status-changes`` → signed partner webhooks (retries, isolation, SSRF guard).

``worker.py`` runs the intake and delivery loops; ``payloads.py`` builds the exact bytes sent;
``sender.py`` signs and POSTs them; ``policy.py`` decides retries and circuit breaking; ``ssrf.py`` guards
destinations. The queue and delivery log live in ``store/webhooks.py``; docs/webhooks.md has the contract.
"""
