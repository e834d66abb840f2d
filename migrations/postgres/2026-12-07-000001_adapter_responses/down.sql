DROP TABLE adapter_responses;
