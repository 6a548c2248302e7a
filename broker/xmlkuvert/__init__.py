"""The hardened XML codec for KOMBIT ``Haendelsesbesked`` documents, one noun per module.

Import the public API from :mod:`broker.xmlcodec`; this package is its implementation.

Modules, in dependency order:

* :mod:`~broker.xmlkuvert.limits`: the size and nesting limits (plain ints, no lxml).
* :mod:`~broker.xmlkuvert.namespaces`: namespace URIs and Clark-notation tag helpers.
* :mod:`~broker.xmlkuvert.schema`: the XSD complex types as data, one table per type.
* :mod:`~broker.xmlkuvert.parser`: the hardened lxml parsers and the guard that enforces the limits.
* :mod:`~broker.xmlkuvert.content`: ``Beskeddata`` and ``…LokalUdvidelse`` content as standalone XML.
* :mod:`~broker.xmlkuvert.decoder`: XML -> :class:`~broker.envelope.Haendelsesbesked`.
* :mod:`~broker.xmlkuvert.encoder`: :class:`~broker.envelope.Haendelsesbesked` -> XML, bare or
  wrapped in ``ModtagBeskedInput``.
"""
