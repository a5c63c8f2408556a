"""HTTPS for apps and the dashboard: certificates from an ACME server or the operator,
the front's https switches, renewals."""
