"""Ferry's QA tools: network scenarios run against a real Ferry, and the BWE simulation.

``qa.scenario`` (YAML scenario files; the built-in ones are in ``qa/scenarios/``),
``qa.runner`` (Ferry + netem's TURN relay + real WebRTC clients, sampled over time),
``qa.context`` (run options and what participants share), ``qa.participants`` (one
class per client kind), ``qa.measurement`` (frame meters, sequence trackers, Ferry's
side through ``Engine.subscriber_stats``), ``qa.result`` (summaries, expectation
checks), ``qa.report`` (JSON, PNG plots, HTML), ``qa.cli`` (``ferry netem run`` /
``list``), ``qa.bwe_simulation`` (the bandwidth estimator against netem links in
virtual time).

Imports run one way: ``qa`` uses ``netem``, ``media``, ``signaling`` (and the clients);
none of them imports ``qa``.
"""
