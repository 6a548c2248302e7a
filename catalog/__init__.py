"""The catalog and access-control core of dueslag: sans-IO, no storage, no HTTP.

Modules (each a noun; nothing here does I/O except reading bundled package data):

* :mod:`catalog.ids`: the record base class and UUID helpers;
* :mod:`catalog.sensitivity`: the four Sikkerhedsklassificering levels;
* :mod:`catalog.messagetypes`: message types and the bundled demo catalog;
* :mod:`catalog.authorities`: authorities (municipalities) and CVR normalisation;
* :mod:`catalog.kle`: KLE patterns and OpgaveEmne matching;
* :mod:`catalog.agreements`: service agreements and their lifecycle table;
* :mod:`catalog.facts`: what access control reads from an envelope, read once;
* :mod:`catalog.access`: the send and receive decisions (enforcement);
* :mod:`catalog.valuelists`: value lists and their lifecycle table;
* :mod:`catalog.valuelistregistry`: the in-memory value lists routing reads;
* :mod:`catalog.audit`: audit events and queries.

The rules are described in ``docs/catalog.md``.
"""
