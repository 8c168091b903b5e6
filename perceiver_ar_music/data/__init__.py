"""MIDI -> notes -> ids -> a prepared folder: reading MIDI (`midi_load`), the event vocabulary
(`vocab`), the one note decoder (`events`), the tokenizer, and writing and reading prepared data
(`store_builder`, `token_store`; `download` fetches MAESTRO)."""
