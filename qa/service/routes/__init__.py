"""One router per resource: answers, documents, index, and the web pages."""
