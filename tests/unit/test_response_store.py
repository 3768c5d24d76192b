"""The Responses API's store: bounded, least recently used out first, 404s that say why."""
import pytest

from serve.api.responses.store import ResponseNotFoundError, ResponseStore, StoredResponse
from serve.config import resolve_config
from serve.errors import ConfigError


def stored(name: str) -> StoredResponse:
    return StoredResponse({"id": name}, [{"role": "user", "content": name}])


def test_the_least_recently_used_response_goes_first():
    store = ResponseStore(max_size=2)
    store.put("a", stored("a"))
    store.put("b", stored("b"))
    store.get("a")  # used: b is now the oldest
    store.put("c", stored("c"))
    assert len(store) == 2 and store.get("a").body == {"id": "a"} and store.get("c").body == {"id": "c"}
    with pytest.raises(ResponseNotFoundError, match="--max-stored-responses"):
        store.get("b")


def test_delete_and_unknown_ids_are_404s():
    store = ResponseStore(max_size=4)
    store.put("a", stored("a"))
    store.delete("a")
    with pytest.raises(ResponseNotFoundError) as caught:
        store.get("a", param="previous_response_id")
    assert caught.value.status_code == 404 and caught.value.param == "previous_response_id"
    with pytest.raises(ResponseNotFoundError):
        store.delete("a")


def test_a_store_of_size_zero_keeps_nothing():
    store = ResponseStore(max_size=0)
    store.put("a", stored("a"))
    assert len(store) == 0


def test_max_stored_responses_is_configured_and_validated():
    assert resolve_config({}, environ={}).max_stored_responses == 1024
    assert resolve_config({"max_stored_responses": 3}, environ={}).max_stored_responses == 3
    assert resolve_config({}, environ={"SERVE_MAX_STORED_RESPONSES": "7"}).max_stored_responses == 7
    with pytest.raises(ConfigError, match="--max-stored-responses must be >= 0"):
        resolve_config({"max_stored_responses": -1}, environ={})
