"""The streaming enrichment service: products in from Kafka, universal categories out."""
