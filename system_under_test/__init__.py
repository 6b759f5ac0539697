"""The system under test: the seed's services as small real FastAPI services.

Each service is its own process, talks to its own store only, and reaches
other services over HTTP only.  Stores sit behind small interfaces
(repository / bus / search index) so that MongoDB, Elasticsearch and Kafka
implementations can replace the embedded ones without touching handlers.
Nothing here imports the harness, scenarios or chaos.
"""
