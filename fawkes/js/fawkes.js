// Fawkes's JavaScript client: being written.
export {}
