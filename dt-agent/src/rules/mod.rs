//! Rule files: parsing, validation and compilation (filled in by the rules work).
