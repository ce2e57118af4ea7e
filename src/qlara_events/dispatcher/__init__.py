"""The dispatcher role: ``qlara.status-changes`` → signed partner webhooks (retries, isolation, SSRF guard).

Not built yet (see the partner-webhooks issue): the role starts, serves /metrics and /healthz, and
consumes nothing, so status changes wait in Kafka until it exists.
"""
