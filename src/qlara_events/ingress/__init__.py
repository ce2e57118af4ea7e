"""The ingress role: provider callbacks and canonical events in, Kafka records out.

``app.py`` holds the routes, ``publisher.py`` the produce-then-answer rule, ``canonical.py`` the
upstream senders' event endpoint body format.
"""
