"""The job contract: what the API and the workers agree on, in one torch-free package.

Settings, the request and response schemas, the task payload, Redis key names, the job store
(including the one function that records a job's end), image storage, metric names and the
webhook target rules. ``service/`` (the HTTP API) and ``workers/`` both import from here; this
package imports neither of them, nor ``models/``.
"""
