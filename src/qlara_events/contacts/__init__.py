"""Pure contact logic shared by the API and the importers: phone normalisation, field rules, file readers."""
