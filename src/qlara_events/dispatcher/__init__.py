"""The dispatcher role: ``qlara.status-changes`` → signed partner webhooks (retries, isolation, SSRF guard).

``intake.py`` makes each change's first attempt straight from the stream (webhooks from the in-memory
``endpoints.py`` cache, slots and breakers in ``lanes.py``, outcomes written by ``recorder.py``) and spills
what must wait to the retry schedule, which ``worker.py``'s retry loop works through. ``payloads.py`` builds
the exact bytes sent; ``sender.py`` signs and POSTs them; ``policy.py`` decides retries and circuit
breaking; ``ssrf.py`` guards destinations. The retry schedule and delivery log live in
``store/webhooks.py``; docs/webhooks.md has the contract.
"""
