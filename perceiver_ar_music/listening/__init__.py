"""What a person looks at and listens to: audio (`render`), piano rolls (`pianoroll`), the
statistics of music (`music_stats`), copying checks (`memorization`) and the sample page
(`report`)."""
