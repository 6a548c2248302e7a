"""XML codec: KOMBIT ``Haendelsesbesked`` documents <-> :class:`~broker.envelope.Haendelsesbesked`.

Theory of operation
-------------------
This module is the codec's public surface and holds no logic; the implementation lives in the
:mod:`broker.xml` package, one noun per module:

* :mod:`broker.xml.limits` and :mod:`broker.xml.namespaces`: the limits and namespace URIs;
* :mod:`broker.xml.parser`: hardened lxml parsing (no DOCTYPE, no entities, nothing fetched;
  element count and nesting enforced while the tree is built);
* :mod:`broker.xml.schema`: the XSD complex types as data, shared by both directions;
* :mod:`broker.xml.content`: ``Beskeddata``/``…LokalUdvidelse`` content as standalone XML;
* :mod:`broker.xml.decoder`: XML -> envelope (:func:`decode_xml`);
* :mod:`broker.xml.encoder`: envelope -> XML (:func:`encode_xml` and friends).

Each module's docstring describes its part of the mapping. Import from here, not from the
package: callers import this module lazily to keep lxml off the JSON path's start-up.
"""

from __future__ import annotations

from broker.xml.content import check_xml_item as check_xml_item
from broker.xml.decoder import decode_xml as decode_xml
from broker.xml.encoder import Envelope as Envelope
from broker.xml.encoder import encode_modtag_besked_input as encode_modtag_besked_input
from broker.xml.encoder import encode_stored as encode_stored
from broker.xml.encoder import encode_xml as encode_xml
from broker.xml.encoder import encode_xml_stored as encode_xml_stored
from broker.xml.limits import MAX_CONTENT_DEPTH as MAX_CONTENT_DEPTH
from broker.xml.limits import MAX_DEPTH as MAX_DEPTH
from broker.xml.limits import MAX_ELEMENTS as MAX_ELEMENTS
from broker.xml.limits import MAX_XML_BYTES as MAX_XML_BYTES
from broker.xml.namespaces import JSON_NS as JSON_NS
from broker.xml.namespaces import KUVERT_NAMESPACES as KUVERT_NAMESPACES
from broker.xml.namespaces import KUVERT_NS as KUVERT_NS
from broker.xml.namespaces import SAGDOK_NS as SAGDOK_NS
from broker.xml.namespaces import STS_NS as STS_NS

# The resolver every parser installs, under its old name: tests patch it to prove that nothing
# is ever fetched.
from broker.xml.parser import Deny as _Deny  # noqa: F401

__all__ = [
    "JSON_NS",
    "KUVERT_NS",
    "MAX_CONTENT_DEPTH",
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "MAX_XML_BYTES",
    "SAGDOK_NS",
    "STS_NS",
    "check_xml_item",
    "decode_xml",
    "encode_modtag_besked_input",
    "encode_stored",
    "encode_xml",
    "encode_xml_stored",
]
