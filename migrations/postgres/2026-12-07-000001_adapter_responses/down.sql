DROP TABLE managed_events;
DROP TABLE adapter_responses;
